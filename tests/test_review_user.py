"""Review of the user-audit fixes: each test pins a regression or a gap found in them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


# -- convert: only an existing output is reported as existing (fix 4) -------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_below_a_file_does_not_claim_the_output_exists(tmp_path: Path, capsys: Any, overwrite: bool) -> None:
    from lazystack.frontends.cli import main

    np.save(tmp_path / "frames.npy", np.zeros((2, 8, 8), np.uint8))
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "out.ome.zarr"  # its parent is a file: mkdir raises FileExistsError
    argv = ["convert", str(tmp_path / "frames.npy"), "--axes", "TYX", "--out", str(out), "--quiet"]
    assert main(argv + (["--overwrite"] if overwrite else [])) == 1
    err = capsys.readouterr().err
    assert not out.exists()
    assert "already exists; pass --overwrite" not in err  # it does not exist, and --overwrite cannot help
    assert "afile" in err
    assert (tmp_path / "afile").read_text() == "not a folder"
