"""CZI structural check: declared sizes and offsets are vetted before libCZI reads a file.

The damaged files are made from files pylibCZIrw's writer produces, by
editing fields at the offsets Zeiss' CZI specification gives (independent of
the checker's parser: the offsets are found with ``bytes.find`` on the
segment Ids). Opening and reading a damaged file runs in a child process, so
that a native crash fails the test (it is reported with its signal) instead
of killing pytest.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pyczi = pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")

from conftest import shared_files  # noqa: E402

import lazystack  # noqa: E402
from lazystack import SourceFormatError  # noqa: E402
from lazystack.sources.czi_check import check_czi_decodes, check_czi_structure  # noqa: E402

ZSTD = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"


def _write(path: Path, compression: str | None = None) -> np.ndarray:
    data = np.random.default_rng(0).integers(1, 60000, (2, 2, 48, 40)).astype(np.uint16)
    with pyczi.create_czi(str(path), exist_ok=True, compression_options=compression) as w:
        for z in range(2):
            for c in range(2):
                w.write(data[z, c], plane={"Z": z, "C": c})
    return data


def _subblocks(raw: bytes) -> list[int]:
    out, at = [], raw.find(b"ZISRAWSUBBLOCK")
    while at >= 0:
        out.append(at)
        at = raw.find(b"ZISRAWSUBBLOCK", at + 1)
    return out


def _edit(src: Path, dst: Path, offset: int, value: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[offset : offset + len(value)] = value
    dst.write_bytes(bytes(raw))
    return dst


def _open_and_read_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import lazystack
        try:
            for stack in lazystack.load_czis({str(path)!r}, "SCZYX"):
                stack.extract_patch(0, None, (0, 0), (8, 8))
                stack.compute()
        except lazystack.LazyStackError as exc:
            print("ERROR", type(exc).__name__, exc)
        else:
            print("READ")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(lazystack.__file__).parents[1])])))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(params=[None, ZSTD], ids=["plain", "zstd"])
def written(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "base.czi"
    _write(path, request.param)
    return path


def test_huge_datasize_raises_instead_of_crashing(written: Path) -> None:
    # DataSize 2**40 in the first sub-block's header: SIGSEGV in libCZI's zstd path without the check
    raw = written.read_bytes()
    bad = _edit(written, written.with_name("datasize.czi"), _subblocks(raw)[0] + 32 + 8, struct.pack("<q", 2**40))
    proc = _open_and_read_in_child(bad)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-800:]}"
    out = proc.stdout
    assert out.startswith("ERROR SourceFormatError"), out
    assert "datasize.czi" in out
    assert "sub-block 0" in out
    assert "DataSize 1099511627776" in out


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_in_directory_raise_cleanly(written: Path, seed: int) -> None:
    raw = written.read_bytes()
    d = raw.find(b"ZISRAWDIRECTORY")
    used = struct.unpack_from("<q", raw, d + 24)[0]
    rng = np.random.default_rng(seed)
    start = d + 32 + 128 + int(rng.integers(0, used - 128 - 40))
    bad = _edit(written, written.with_name("dir40.czi"), start, rng.integers(0, 256, 40, dtype=np.uint8).tobytes())
    proc = _open_and_read_in_child(bad)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-800:]}"
    # a clear error naming the file, or (bytes landing on fields no reader uses) a correct read
    if proc.stdout.startswith("ERROR"):
        assert "dir40.czi" in proc.stdout, proc.stdout
    else:
        assert proc.stdout.startswith("READ"), proc.stdout + proc.stderr[-500:]


def _field_case(tmp_path: Path, name: str) -> tuple[Path, str]:
    base = tmp_path / "base.czi"
    _write(base)
    raw = base.read_bytes()
    sb = _subblocks(raw)
    d = raw.find(b"ZISRAWDIRECTORY")
    entry = d + 32 + 128
    dst = tmp_path / f"{name}.czi"
    edits = {
        "metadata-size-negative": (sb[1] + 32, struct.pack("<i", -5), "sub-block 1.*MetadataSize -5"),
        "attachment-size-huge": (sb[2] + 36, struct.pack("<i", 2**30), "sub-block 2.*AttachmentSize 1073741824"),
        "datasize-too-small": (sb[3] + 40, struct.pack("<q", 100), "sub-block 3.*DataSize 100 is smaller"),
        "position-beyond-eof": (entry + 6, struct.pack("<q", 10**12), "sub-block 0.*FilePosition 1000000000000"),
        "position-not-a-subblock": (entry + 6, struct.pack("<q", 32), "sub-block 0.*segment Id"),
        "entry-count-huge": (d + 32, struct.pack("<i", 10**6), "EntryCount 1000000"),
        "pixel-type-unknown": (entry + 2, struct.pack("<i", 77), "sub-block 0.*PixelType 77"),
        "dimension-count-huge": (entry + 28, struct.pack("<i", 10**6), "sub-block 0.*DimensionCount 1000000"),
        "directory-position-beyond-eof": (84, struct.pack("<q", 10**9), "sub-block directory.*outside the file"),
        "used-size-beyond-eof": (sb[0] + 24, struct.pack("<q", 10**9), "sub-block 0.*UsedSize 1000000000"),
    }
    offset, value, pattern = edits[name]
    return _edit(base, dst, offset, value), pattern


@pytest.mark.parametrize(
    "name",
    [
        "metadata-size-negative",
        "attachment-size-huge",
        "datasize-too-small",
        "position-beyond-eof",
        "position-not-a-subblock",
        "entry-count-huge",
        "pixel-type-unknown",
        "dimension-count-huge",
        "directory-position-beyond-eof",
        "used-size-beyond-eof",
    ],
)
def test_each_field_is_named(tmp_path: Path, name: str) -> None:
    bad, pattern = _field_case(tmp_path, name)
    with pytest.raises(SourceFormatError, match=rf"{name}\.czi.*{pattern}"):
        check_czi_structure(bad)
    with pytest.raises(SourceFormatError, match=rf"{name}\.czi"):  # load_czis runs the check on open
        lazystack.load_czis(str(bad), "SCZYX")


@pytest.mark.parametrize("path", shared_files("czi", "*.czi"), ids=lambda p: p.name)
def test_real_files_pass(path: Path) -> None:
    entries = check_czi_structure(path)
    # every entry's sub-block is where the directory says (an independent scan of the segment Ids)
    raw = path.read_bytes()
    assert {e.position for e in entries} <= set(_subblocks(raw))
    assert len(entries) >= 1


def test_written_files_pass_and_read(written: Path) -> None:
    data = _write(written, None)  # the same data either way; rewrite uncompressed for the reference
    entries = check_czi_structure(written)
    assert len(entries) == 4
    (stack,) = lazystack.load_czis(str(written), "SCZYX")
    np.testing.assert_array_equal(stack.compute()[0], data.transpose(1, 0, 2, 3))


def test_checked_mode(tmp_path: Path) -> None:
    good = tmp_path / "good.czi"
    _write(good, ZSTD)
    check_czi_decodes(good)  # decodes every plane in a child: no error
    raw = good.read_bytes()
    bad = bytearray(raw)
    for i, at in enumerate(_subblocks(raw)):  # scramble each compressed payload inside consistent sizes
        payload = at + 32 + 256 + 64
        bad[payload : payload + 400] = np.random.default_rng(i).integers(0, 256, 400, dtype=np.uint8).tobytes()
    path = tmp_path / "payload.czi"
    path.write_bytes(bytes(bad))
    check_czi_structure(path)  # the sizes are consistent: the structure check cannot see it
    with pytest.raises(SourceFormatError, match=r"payload\.czi.*cannot be decoded"):
        check_czi_decodes(path)


# -- a CZI deleted or replaced after opening: what docs/configuration.md promises ------------------------------
@pytest.mark.parametrize("cache_bytes", [256 * 2**20, 0], ids=["cache-on", "cache-off"])
@pytest.mark.parametrize("how", ["deleted", "replaced"])
@pytest.mark.parametrize("read_first", [True, False], ids=["after-a-read", "before-any-read"])
def test_czi_deleted_or_replaced_raises_source_read_error(
    tmp_path: Path, how: str, read_first: bool, cache_bytes: int
) -> None:
    from lazystack import SourceReadError

    with lazystack.chunk_cache_size(cache_bytes):
        _deleted_or_replaced(tmp_path, how, read_first, SourceReadError)


def _deleted_or_replaced(tmp_path: Path, how: str, read_first: bool, error: type[Exception]) -> None:
    path = tmp_path / "moving.czi"
    _write(path)
    (stack,) = lazystack.load_czis(str(path), "SCZYX")
    if read_first:
        stack.extract_patch(0, None, (0, 0, 0), (1, 8, 8))
    if how == "deleted":
        path.unlink()
    else:  # a new file renamed over the old one
        new = tmp_path / "new.czi"
        with pyczi.create_czi(str(new), exist_ok=True) as w:
            for z in range(2):
                for c in range(2):
                    w.write(np.zeros((48, 40), np.uint16), plane={"Z": z, "C": c})
        os.replace(new, path)
    for sample in range(stack.n_samples):  # every read, cached block or not
        with pytest.raises(error, match=r"moving\.czi.*(changed since the stack was opened|cannot be read)"):
            stack.extract_patch(sample, None, (0, 0, 0), (1, 8, 8))


def test_configuration_docs_state_the_czi_behaviour() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    section = text.split("## Files that change while stacks read them", 1)[1].split("\n## ", 1)[0]
    bullet = section.split("**Deleted or replaced by a rename**", 1)[1].split("\n- **", 1)[0]
    assert "A **CZI** stack raises `SourceReadError`" in bullet
    assert "TIFF, `.npy`/memmap or custom-file stack keeps serving" in bullet
