"""Every HTTP file system a Zarr store is opened on gets its aiohttp session closed, equal ones included.

fsspec's file systems compare equal when their options are (every default ``http`` one equals every
other), so a registry of file systems keyed by equality took a new file system made after
``HTTPFileSystem.clear_instance_cache()`` (as the HTTP test server does on exit) for one already
registered: its session was never closed, and aiohttp printed "Unclosed client session" when it was
collected (seen at the end of a full test run). No request is made: the session is made at registration.
"""

from __future__ import annotations

import gc
import warnings

from fsspec.implementations.http import HTTPFileSystem
from zarr.core.sync import sync
from zarr.storage import FsspecStore

from lazystack.sources.zarr.engines import close_http_session_at_exit


def _session(store: FsspecStore) -> object:
    async def get() -> object:
        return await store.fs.set_session()  # the session the file system holds (made at registration)

    return sync(get())


def test_equal_but_distinct_http_file_systems_each_get_their_session_closed() -> None:
    first = FsspecStore.from_url("http://127.0.0.1:1/a.zarr", read_only=True)
    close_http_session_at_exit(first.fs)
    HTTPFileSystem.clear_instance_cache()
    second = FsspecStore.from_url("http://127.0.0.1:2/b.zarr", read_only=True)
    assert second.fs is not first.fs
    assert second.fs == first.fs  # fsspec's equality: the same options
    close_http_session_at_exit(second.fs)
    sessions = [_session(first), _session(second)]
    assert sessions[0] is not sessions[1]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        del first, second
        HTTPFileSystem.clear_instance_cache()
        gc.collect()
    assert [s.closed for s in sessions] == [True, True]  # type: ignore[attr-defined]
    assert not [w for w in record if "Unclosed" in str(w.message)]
