"""The package's shape: layers that import only downward, no import cycle, a cheap ``import lazystack``.

The layers are declared once, as import-linter contracts in ``pyproject.toml``
(``[tool.importlinter]``); these tests run them, and check with grimp's import
graph what a layers contract does not: no cycle anywhere (inside a layer
too) and no module importing the package's public façade. grimp reads every
``import`` statement of a module, those inside functions and under
``TYPE_CHECKING`` included.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lazystack

grimp = pytest.importorskip("grimp", reason="the layering checks need import-linter (the 'test' extra)")
pytest.importorskip("importlinter", reason="the layering checks need import-linter (the 'test' extra)")

ROOT = Path(__file__).resolve().parents[1]

#: Importing lazystack must not import these (SPEC 1: heavy modules load on first use).
HEAVY = ("dask.array", "xarray", "pandas", "zarr", "tifffile")


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), env.get("PYTHONPATH", "")])
    return env


def _lint_imports(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # import-linter's documented command line (its Python entry point's keywords differ between releases)
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--config", str(config), "--no-cache"],
        cwd=cwd,
        env=_env(cwd),
        capture_output=True,
        text=True,
        timeout=240,
    )


def _cycles(graph: object) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    imports = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}  # type: ignore[attr-defined]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(imports[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(imports.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_layer_contracts_are_kept() -> None:
    run = _lint_imports(ROOT / "pyproject.toml", ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout, run.stdout


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("lazystack", cache_dir=None)
    assert _cycles(graph) == []


def test_no_module_imports_the_public_facade() -> None:
    """``lazystack/__init__.py`` sits on top of every layer: nothing inside the package imports it."""
    graph = grimp.build_graph("lazystack", cache_dir=None)
    assert sorted(graph.find_modules_that_directly_import("lazystack")) == []


def test_the_checks_catch_an_upward_import_in_a_function_and_a_cycle(tmp_path: Path) -> None:
    """The same contract over a toy package: a function-level upward import and a cycle are caught."""
    pkg = tmp_path / "toypkg"
    for layer in ("core", "ops"):
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "batch.py").write_text("from ..core import axes\n")
    (pkg / "core" / "axes.py").write_text(
        textwrap.dedent(
            """
            def lazily():
                from ..ops import batch  # upward, and a cycle with ops.batch
                return batch
            """
        )
    )
    config = tmp_path / "contracts.toml"
    config.write_text(
        textwrap.dedent(
            """
            [tool.importlinter]
            root_package = "toypkg"

            [[tool.importlinter.contracts]]
            name = "toy layers"
            type = "layers"
            containers = ["toypkg"]
            layers = ["ops", "core"]
            """
        )
    )
    run = _lint_imports(config, tmp_path)
    assert run.returncode != 0, run.stdout
    assert "toypkg.core.axes -> toypkg.ops.batch" in run.stdout, run.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("toypkg", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert _cycles(graph) == [["toypkg.core.axes", "toypkg.ops.batch"]]


def _fresh_python(code: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", code], env=_env(ROOT), capture_output=True, text=True, timeout=240, check=False
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_import_lazystack_loads_no_heavy_module() -> None:
    code = f"import json, sys, lazystack; print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    assert json.loads(_fresh_python(code)) == []


def test_public_names_resolve_on_first_use() -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        from lazystack import load_zarrs, LazyImageStack
        import lazystack
        loaded_by_zarr_loader = [m for m in {list(HEAVY)!r} if m in sys.modules]
        missing = [n for n in lazystack.__all__ if getattr(lazystack, n, None) is None]
        print(json.dumps([load_zarrs.__module__, LazyImageStack.__module__, missing, sorted(dir(lazystack))]))
        """
    )
    loaders_module, stack_module, missing, names = json.loads(_fresh_python(code))
    assert loaders_module == "lazystack.loading.loaders"
    assert stack_module == "lazystack.stack"
    assert missing == []
    assert set(lazystack.__all__) <= set(names)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = lazystack.no_such_name


def test_stack_methods_reach_the_operations_from_a_fresh_process() -> None:
    """Only the stack module imported by name: its methods still reach batch, normalisation and plotting."""
    code = textwrap.dedent(
        """
        import numpy as np
        from lazystack.stack import LazyImageStack
        from lazystack.core.extensions import provided

        data = np.arange(64, dtype=np.uint16).reshape(8, 8)
        stack = LazyImageStack(data, "YX")
        (patch,) = stack.extract_patches([(0, None, (2, 3), (4, 4))])
        assert np.array_equal(patch[0], data[2:6, 3:7].astype(np.float32))
        print(sorted(f.__module__ for f in map(provided, ["extract_patches", "normalized", "show"])))
        """
    )
    assert _fresh_python(code).strip() == "['lazystack', 'lazystack', 'lazystack']"


def test_a_stack_and_its_patches_load_no_heavy_module() -> None:
    """What a spawned DataLoader worker imports to unpickle a stack and read patches: no dask, xarray, pandas."""
    code = textwrap.dedent(
        f"""
        import json, pickle, sys
        import numpy as np
        from lazystack import LazyImageStack

        data = np.arange(2 * 16 * 16, dtype=np.uint8).reshape(2, 16, 16)
        stack = pickle.loads(pickle.dumps(LazyImageStack(data, "ZYX")))
        patch = stack.extract_patch(0, None, (0, 4, 4), (2, 8, 8))
        assert np.array_equal(patch[0], data[:, 4:12, 4:12].astype(np.float32))
        print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))
        """
    )
    assert json.loads(_fresh_python(code)) == []


def test_an_unpickled_zarr_stack_reads_patches_without_importing_dask(tmp_path: Path) -> None:
    """A spawned worker's Zarr stack: unpickling and reading import no dask at all (it cost 0.3-0.4 s a worker)."""
    zarr = pytest.importorskip("zarr")
    data = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(1, 32, 32))
    from lazystack import load_zarrs

    (tmp_path / "stack.pkl").write_bytes(pickle.dumps(load_zarrs([str(tmp_path / "a.zarr")], "SYX")[0]))
    code = textwrap.dedent(
        f"""
        import json, pickle, sys
        import numpy as np

        stack = pickle.loads(open({str(tmp_path / "stack.pkl")!r}, "rb").read())
        patch = stack.extract_patch(1, None, (30, 20), (8, 8))
        expected = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)[1, 30:38, 20:28]
        assert np.array_equal(patch[0], expected.astype(np.float32))
        print(json.dumps(sorted(m for m in sys.modules if m == "dask" or m.startswith("dask."))))
        """
    )
    assert json.loads(_fresh_python(code)) == []
