"""PyTorch datasets over lazystack stacks and a sampler (the ``torch`` extra).

[`PatchDataset`][PatchDataset] is a map-style dataset for [`torch.utils.data.DataLoader`][torch.utils.data.DataLoader]:
index ``i`` of epoch ``e`` is the patch of ``sampler.spec(i, e)``, read with
[`lazystack.extract_patches()`][lazystack.extract_patches] for a whole batch at once
(``__getitems__``). Because a spec is a pure function of the seed, the epoch
and the index, an epoch is the same batches for any ``num_workers``, start
method (fork, spawn, forkserver: the dataset pickles as the stacks' recipes
and the sampler's geometry) and any split over distributed ranks.

[`EpochSampler`][EpochSampler] is the DataLoader's index sampler: it yields
``(epoch, index)`` pairs, so that ``set_epoch`` reaches persistent workers
(which keep their own copy of the dataset), and shards an epoch over
``world_size`` ranks like `torch.utils.data.distributed.DistributedSampler`.

Throughput (see the *DataLoader* guide): ``PatchDataset(read_ahead=N)`` reads
a worker's next ``N`` batches in a background thread within a byte budget,
so that decoding overlaps training; [`ChunkLocalSampler`][ChunkLocalSampler]
draws several patches from each chunk a base sampler lands in, so that a
batch decodes fewer chunks (at the cost of patch diversity).
"""

from __future__ import annotations

import itertools
import operator
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .core.errors import ChannelIndexError, LazyStackError, MissingDependencyError, ShapeMismatchError
from .io.cache import parse_size
from .io.process import current_pid
from .ops.batch import extract_patches
from .sampling import PatchSpec, Sampler, check_pairs, geometry
from .sampling.samplers import (
    _as_int,
    _check_length,
    _check_seed,
    _hash_key,
    _index_array,
    _indexed,
    _uniforms,
    resolve_channels,
)

if TYPE_CHECKING:
    import torch


def _torch() -> Any:
    """Import torch on first use (this module imports without it, e.g. for doctest collection)."""
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        msg = f"lazystack.torch needs PyTorch ({err}): install it, e.g. pip install 'lazystack[torch]'"
        raise MissingDependencyError(msg) from err
    return torch


__all__ = ["ChunkLocalSampler", "EpochSampler", "PatchDataset", "ReadAheadStats"]


def _is_bool(value: Any) -> bool:
    """A Python, NumPy or torch boolean (a 0-d bool array or tensor too): ``operator.index`` takes some for 0 / 1."""
    if isinstance(value, (bool, np.bool_)):
        return True
    return type(value) is not int and str(getattr(value, "dtype", "")) in ("bool", "torch.bool")


def _integer(name: str, value: Any) -> int:
    """An integer parameter or index: any integer (Python, NumPy, 0-d tensor) but a boolean."""
    if type(value) is int:  # the common case first (indices of a batch)
        return value
    if _is_bool(value):
        msg = f"{name} must be an integer, got {value!r} (a boolean): pass the number itself"
        raise TypeError(msg)
    return _as_int(name, value)


def _non_negative(name: str, value: Any) -> int:
    """[`_integer()`][_integer], and ``>= 0`` (seeds, epochs)."""
    return _check_seed(name, _integer(name, value))


def _flag(name: str, value: Any) -> bool:
    """A yes / no parameter: a Python or NumPy boolean (a string such as ``"no"`` would be true)."""
    if not isinstance(value, (bool, np.bool_)):
        msg = f"{name} must be True or False, got {value!r} ({type(value).__name__})"
        raise TypeError(msg)
    return bool(value)


#: Attributes of a PatchDataset whose assignment changes what its indices read (a new sampler generation).
_STATE = frozenset(("sampler", "stacks", "targets", "masks", "channels", "transform", "return_spec", "ragged"))

#: Those of them that change which patch an index is (the rest, e.g. ``transform``, change how it is delivered).
_REINDEX = frozenset(("sampler", "stacks", "targets", "masks"))


class _EpochKey(tuple[int, int]):
    """An ``(epoch, index)`` pair (what EpochSampler yields) that also tells the dataset state it was drawn for.

    It is the pair (equal to the plain tuple, indexed and unpacked as one),
    with a ``token``: the dataset's identity and its generation (how many
    times its sampler, stacks, channels, transform ... had been replaced)
    when the epoch started. A persistent worker's copy of the dataset
    compares it with its own, and refuses an index drawn for another state
    instead of reading the old sampler's patch.
    """

    token: tuple[int, int, int]

    def __new__(cls, epoch: int, index: int, token: tuple[int, int, int]) -> _EpochKey:
        key = super().__new__(cls, (epoch, index))
        key.token = token
        return key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_EpochKey, (self[0], self[1], self.token))


DEFAULT_READ_AHEAD_BYTES = 256 * 2**20

Item = dict[str, "torch.Tensor"]


class PatchDataset:
    """Patches of stacks at a sampler's specs, with optional targets and masks read at the same specs.

    Each item is a dict: ``"input"`` (``float32`` ``C(Z)YX`` tensor), and
    ``"target"`` / ``"mask"`` when those stacks are given, and ``"spec"``
    (``int64``: stack, sample, coords..., patch size...) when ``return_spec``.

    Parameters
    ----------
    stacks : sequence of ImageStack
        The input stacks the sampler was built over.
    sampler : Sampler
        A [`Sampler`][lazystack.sampling.Sampler] (random, grid, a manifest's ...).
    targets, masks : sequence of ImageStack, optional
        Stacks paired with ``stacks`` (same count, samples and spatial
        shapes; any channel count), read at the same specs, all channels.
    channels : "spec" or sequence of int
        Input channels: the spec's (default) or these for every stack.
    transform : callable, optional
        Applied to each item dict (picklable for spawn workers).
    return_spec : bool
        Add the ``"spec"`` tensor to each item.
    epoch : int
        Epoch used for plain integer indices (see [`set_epoch()`][set_epoch]).
    read_ahead : int
        Batches to read ahead in a background thread (default 0: off). Each
        ``__getitems__`` call predicts this process's next ``read_ahead``
        batches (see Notes) and reads them while the caller trains; a
        predicted batch that is then asked for is served from memory, a
        wrong prediction is dropped (the result is the same either way).
    read_ahead_bytes : int or str
        Budget of the patches read ahead and not yet taken (default 256 MiB;
        ``"1GiB"`` etc.): a batch is started only if its expected bytes
        (those of the batch just served) fit in what is left, and one that
        turns out larger than what is left is dropped once read, so the
        patches held never exceed the budget.
    ragged : bool
        Let a batch mix patch sizes (default False). A sampler whose patches
        differ in size ([`WholeSampleSampler`][lazystack.WholeSampleSampler]
        over images of different sizes) gives items that torch's default
        ``collate_fn`` cannot stack: by default, without a ``transform``
        (which may crop or pad the items to one size), a batch that mixes
        sizes is refused, before it is read, with a
        [`ShapeMismatchError`][lazystack.ShapeMismatchError] naming the sizes
        and what to do (``DataLoader(batch_size=1)`` or ``batch_size=None``,
        or a sampler of one patch size). ``True`` returns such a batch's
        items as they are, for a ``collate_fn`` of your own (padding, lists).

    Raises
    ------
    ValueError
        For a negative ``epoch`` or ``read_ahead``, a boolean ``read_ahead``
        (``True``, a 0-d boolean tensor), or a ``read_ahead_bytes`` that is
        not a size.
    TypeError
        For an ``epoch`` that is not an integer (a boolean is not one), a
        ``read_ahead`` that is not an integer, a ``ragged`` or ``return_spec`` that is not a boolean, a
        ``transform`` that is not callable, or a ``sampler`` that is not a
        lazystack sampler (an [`EpochSampler`][EpochSampler] is the DataLoader's);
        at a batch, for an index that is neither an integer nor a pair (a
        ``PatchSpec``: the lazystack sampler given to the DataLoader), or one
        ``EpochSampler`` pair given as the whole batch (an ``EpochSampler``
        passed as the DataLoader's ``batch_sampler``).
    ChannelIndexError
        Before any batch, when stacks whose patches would be batched together
        have different channel counts and no channel selection makes them equal.
    ShapeMismatchError
        When targets or masks do not pair with the inputs, or a stack the
        sampler draws from is missing from the inputs or has, at its place,
        samples and spatial shape other than the sampler's ``geometries``
        (stacks it never draws from, e.g. coarse levels, may be left out
        from the end); at a batch that mixes patch sizes, unless ``ragged``.
    LazyStackError
        At a batch of [`EpochSampler`][EpochSampler] pairs drawn for another
        state of this dataset (a persistent worker's copy made before its
        ``sampler`` was replaced: see Notes).

    Notes
    -----
    It is a `torch.utils.data.Dataset` by protocol (``__len__``,
    ``__getitem__``, ``__getitems__``), not by inheritance, so that this
    module imports without torch.

    An index is an ``int`` (of the dataset's current epoch) or an ``(epoch,
    index)`` pair (what [`EpochSampler`][EpochSampler] yields); a boolean is
    not an index (``TypeError``). ``dataset[list]`` is a batch: the list of
    the items of those indices (as ``torch.utils.data.Subset`` asks for
    them), not a pair. With persistent
    workers, use [`EpochSampler`][EpochSampler] and its ``set_epoch``: the workers'
    copies of the dataset do not see [`set_epoch()`][set_epoch] calls made later in
    the main process. Nor do they see a new ``sampler`` (or ``stacks``,
    ``transform`` ...) assigned later: the pairs of an ``EpochSampler`` built
    over the dataset carry its generation, and a copy at another generation
    refuses them, naming what to do (see [`EpochSampler`][EpochSampler]).

    Read-ahead predicts a worker's next batches from the one it was asked
    for: a batch whose indices step evenly (``EpochSampler``'s in-order
    epochs, one DDP rank's share) is followed, in a worker of a DataLoader
    with ``W`` workers (``W = 1`` in the main process), by the same indices
    shifted by ``W`` batch lengths. Shuffled index orders are not predicted
    (nothing is read ahead after a miss until the batches step evenly again);
    a random sampler's specs are random already, so an in-order
    ``EpochSampler`` loses nothing. The thread is started on the first batch
    in each process (never inherited through ``fork``, never pickled) and
    reads the predicted batches one at a time: at interpreter exit (or a
    worker's), at most the batch being read is finished. A batch read ahead
    is served only while the dataset's ``sampler``, ``stacks``, ``targets``,
    ``masks`` and ``channels`` are the objects it was read with (replace
    them, do not change them in place); one whose read failed in the thread
    is read again by the caller, so an error surfaces from the caller's read.
    """

    def __init__(
        self,
        stacks: Sequence[Any],
        sampler: Sampler,
        *,
        targets: Sequence[Any] | None = None,
        masks: Sequence[Any] | None = None,
        channels: str | Sequence[int] = "spec",
        transform: Callable[[Item], Any] | None = None,
        return_spec: bool = False,
        epoch: int = 0,
        read_ahead: int = 0,
        read_ahead_bytes: int | str = DEFAULT_READ_AHEAD_BYTES,
        ragged: bool = False,
    ) -> None:
        _torch()
        #: this dataset's identity (kept by its pickled copies, e.g. a DataLoader worker's)
        # (random, not a per-process count: a restarted job often has the same pid, e.g. 1 in a container, and an
        # EpochSampler or dataset restored from its checkpoint would pass for the new run's dataset)
        self._uid = (current_pid(), int.from_bytes(os.urandom(8), "little"))
        self._generation = 0  # bumped by each assignment of a _STATE attribute (see __setattr__)
        if not callable(getattr(sampler, "epoch_specs", None)) or not hasattr(sampler, "__len__"):
            msg = (
                f"PatchDataset's sampler must be a lazystack Sampler (RandomSampler, GridSampler, a manifest's ...: "
                f"it tells each index's patch), got {type(sampler).__name__}"
                + (
                    ": an EpochSampler goes to the DataLoader (DataLoader(dataset, sampler=EpochSampler(dataset)))"
                    if isinstance(sampler, EpochSampler)
                    else ""
                )
            )
            raise TypeError(msg)
        if transform is not None and not callable(transform):
            msg = f"transform must be a callable applied to each item dict (or None), got {transform!r}"
            raise TypeError(msg)
        self.stacks = list(stacks)
        self.sampler = sampler
        self.targets = None if targets is None else list(targets)
        self.masks = None if masks is None else list(masks)
        groups = [self.stacks] + [g for g in (self.targets, self.masks) if g is not None]
        names = ["input"] + [n for n, g in (("target", self.targets), ("mask", self.masks)) if g is not None]
        check_pairs(*groups, names=names)
        _check_sampler_stacks(sampler, self.stacks)
        if isinstance(channels, str):
            if channels != "spec":
                msg = f"channels must be 'spec' or a sequence of channel indices, got {channels!r}"
                raise ValueError(msg)
            self.channels: tuple[int, ...] | str | None = "spec"
            if getattr(sampler, "channels", None) is None:
                resolve_channels(None, [geometry(s) for s in self.stacks], self.stacks)
        else:
            self.channels = resolve_channels(channels, [geometry(s) for s in self.stacks], self.stacks)
        for name, group in (("target", self.targets), ("mask", self.masks)):
            if group is not None:
                try:
                    resolve_channels(None, [geometry(s) for s in group], group)
                except ChannelIndexError as err:
                    msg = f"{name} stacks: {err}"
                    raise ChannelIndexError(msg) from None
        self.transform = transform
        self.return_spec = _flag("return_spec", return_spec)
        #: whether a batch may mix patch sizes (see the class documentation)
        self.ragged = _flag("ragged", ragged)
        self.epoch = _non_negative("epoch", epoch)
        self.read_ahead = _as_int("read_ahead", read_ahead)
        if self.read_ahead < 0 or _is_bool(read_ahead):
            msg = f"read_ahead must be a number of batches >= 0, got {read_ahead!r}"
            raise ValueError(msg)
        self.read_ahead_bytes = parse_size(read_ahead_bytes, "read_ahead_bytes")
        self._ahead: _ReadAhead | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __setattr__(self, name: str, value: Any) -> None:
        # what an index reads changes: indices drawn for the old state are refused. Not in a DataLoader worker,
        # whose worker_init_fn may set up its own copy: the copy keeps the generation it was made at
        if name in _STATE and _torch().utils.data.get_worker_info() is None:
            generation = self.__dict__.get("_generation", 0) + 1
            object.__setattr__(self, "_generation", generation)
            if name in _REINDEX:  # the generation from which an epoch's earlier indices mean other patches
                object.__setattr__(self, "_reindexed", generation)
        object.__setattr__(self, name, value)

    def _token(self) -> tuple[int, int, int]:
        """This dataset's identity and generation, which [`EpochSampler`][EpochSampler] gives its indices."""
        return (*self._uid, self._generation)

    def _check_tokens(self, indices: Sequence[Any]) -> None:
        """Refuse ``(epoch, index)`` pairs an EpochSampler drew for another state of this dataset (see Notes)."""
        mine = self._token()
        for index in indices:
            if type(index) is _EpochKey and index.token != mine and index.token[:2] == mine[:2]:
                drawn, what = index.token[2], "sampler (or stacks, targets, masks, channels, transform ...)"
                if drawn > mine[2]:
                    msg = (
                        f"index {tuple(index)} was drawn by an EpochSampler after this PatchDataset's {what} was "
                        f"replaced (generation {drawn}), but this copy of the dataset is older (generation {mine[2]}) "
                        "and would read the old one: persistent DataLoader workers (persistent_workers=True) keep "
                        "the dataset they were started with and never see a replacement. Make a new DataLoader "
                        "after replacing it (its workers copy the dataset as it is then), or use "
                        "persistent_workers=False"
                    )
                else:
                    if drawn >= self.__dict__.get("_reindexed", 0):
                        continue  # only a transform, channels ... since: this copy applies them at once, as before
                    what = "sampler (or stacks, targets, masks)"
                    msg = (
                        f"index {tuple(index)} was drawn by an EpochSampler before this PatchDataset's {what} was "
                        f"replaced (generation {drawn}, now {mine[2]}): the rest of that epoch follows the old "
                        "sampler's order and length. Replace it between epochs, and start the next epoch "
                        "(iter(loader)) after"
                    )
                raise LazyStackError(msg)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ahead": None}  # the read-ahead thread and its batches stay in this process

    def read_ahead_stats(self) -> ReadAheadStats | None:
        """This process's read-ahead counters, or None before its first batch (or with ``read_ahead=0``)."""
        ahead = self._ahead
        return None if ahead is None or ahead.pid != current_pid() else ahead.stats()

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of plain integer indices (in this process only).

        Parameters
        ----------
        epoch : int
            Non-negative epoch number.
        """
        self.epoch = _non_negative("epoch", epoch)

    def spec(self, index: int | tuple[int, int]) -> PatchSpec:
        """The spec of an index (``int`` or ``(epoch, index)``), with the dataset's channel selection."""
        epoch, i = self._key(index)
        return _spec(self.sampler, self.channels, epoch, i)

    def __getitem__(self, index: int | tuple[int, int] | list[int | tuple[int, int]]) -> Any:
        if isinstance(index, list):  # a batch of indices, as torch's Subset asks for one (not an (epoch, index) pair)
            return self.__getitems__(index)
        return self.__getitems__([index])[0]

    def _key(self, index: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(index, (tuple, list)):
            if len(index) != 2:
                msg = f"index {index!r}: accepted are an int or an (epoch, index) pair" + (
                    " (a PatchSpec is what a lazystack sampler yields: give it to PatchDataset, and the DataLoader "
                    "sampler=EpochSampler(dataset))"
                    if isinstance(index, PatchSpec)
                    else ""
                )
                raise TypeError(msg)
            return _integer("epoch", index[0]), _integer("index", index[1])
        return self.epoch, _integer("index", index)

    def _state(self) -> tuple[Any, ...]:
        """What a batch's patches depend on besides its keys (a batch read ahead is served only with the same)."""
        return (self.sampler, self.channels, self.stacks, self.targets, self.masks)

    def _read(self, state: tuple[Any, ...], keys: Sequence[tuple[int, int]]) -> tuple[list[PatchSpec], list[Any]]:
        """The specs and patches (numpy) of a batch with ``state`` (see `_state`), in one ``extract_patches`` call."""
        sampler, channels, stacks, targets, masks = state
        specs = _specs(sampler, channels, keys)
        if not self.ragged and self.transform is None and specs:  # a transform may crop or pad to one size
            _check_one_size(specs, stacks)
        requests = [(_indexed(stacks, s.stack), s.sample, s.channels, s.coords, s.patch_size) for s in specs]
        for group in (targets, masks):
            if group is not None:
                requests += [(_indexed(group, s.stack), s.sample, None, s.coords, s.patch_size) for s in specs]
        return specs, extract_patches(requests)

    def _predict(self, keys: list[tuple[int, int]]) -> list[tuple[tuple[int, int], ...]]:
        """This process's next ``read_ahead`` batches after ``keys``, if its indices step evenly (else none)."""
        epoch = keys[0][0]
        idx = [i for _, i in keys]
        step = idx[1] - idx[0] if len(idx) > 1 else 1
        if step < 1 or any(e != epoch for e, _ in keys) or any(b - a != step for a, b in itertools.pairwise(idx)):
            return []
        info = _torch().utils.data.get_worker_info()
        shift = step * len(idx) * (1 if info is None else info.num_workers)
        n = len(self)
        out = []
        for k in range(1, self.read_ahead + 1):
            nxt = tuple((epoch, i + k * shift) for i in idx if i + k * shift < n)
            if not nxt:
                break
            out.append(nxt)
        return out

    def _read_ahead(self, keys: list[tuple[int, int]]) -> tuple[list[PatchSpec], list[Any]]:
        """A batch, from this process's read-ahead if it was predicted; starts reading the next ones."""
        ahead = self._ahead
        if ahead is None or ahead.pid != current_pid():
            ahead = self._ahead = _ReadAhead(self.read_ahead_bytes)
        state = self._state()
        pending = ahead.take(tuple(keys), state)
        if pending is None and not ahead.expected:  # the first batch: its bytes tell what to reserve
            first = self._read(state, keys)
            ahead.learn(sum(int(p.nbytes) for p in first[1]))
            ahead.offer(self._predict(keys), state, self._read)
            return first
        ahead.offer(self._predict(keys), state, self._read)  # started before waiting: they overlap this one
        result: tuple[list[PatchSpec], list[Any]] | None = None
        if pending is not None:
            try:
                result = pending.result()
            except Exception:  # the read-ahead failed: read here instead (an error then surfaces from here)
                result = None
        if result is None:
            result = self._read(state, keys)
        ahead.learn(sum(int(p.nbytes) for p in result[1]))
        return result

    def __getitems__(self, indices: Sequence[int | tuple[int, int]]) -> list[Any]:
        """Read a batch of items in one [`lazystack.extract_patches()`][lazystack.extract_patches] call."""
        if type(indices) is _EpochKey:  # torch's fetcher hands a batch sampler's item over as the batch
            msg = (
                f"got one (epoch, index) pair {tuple(indices)} as a batch of indices: an EpochSampler is the "
                "DataLoader's sampler=, not its batch_sampler= (which would read a batch of the two as indices). "
                "Pass DataLoader(dataset, sampler=EpochSampler(dataset), batch_size=...)"
            )
            raise TypeError(msg)
        self._check_tokens(indices)
        keys = [self._key(i) for i in indices]
        if self.read_ahead and keys:
            specs, patches = self._read_ahead(keys)
        else:
            specs, patches = self._read(self._state(), keys)
        torch = _torch()
        n = len(specs)
        items: list[Any] = []
        for j, s in enumerate(specs):
            item: Item = {"input": torch.from_numpy(patches[j])}
            offset = n
            for name, group in (("target", self.targets), ("mask", self.masks)):
                if group is not None:
                    item[name] = torch.from_numpy(patches[offset + j])
                    offset += n
            if self.return_spec:
                item["spec"] = torch.tensor([s.stack, s.sample, *s.coords, *s.patch_size], dtype=torch.int64)
            items.append(item if self.transform is None else self.transform(item))
        return items


def _check_sampler_stacks(sampler: Sampler, stacks: list[Any]) -> None:
    """The stacks the sampler draws from (when it tells their geometry) must be given at their places, else an error.

    Otherwise a spec naming a stack past the list given fails at the first batch, and one of a stack of another
    size reads past its image (zeros). Stacks the sampler never draws from (levels left out, e.g. the coarse levels
    of a pyramid after the finest) may be missing from the end, and stacks after the sampler's are allowed.
    """
    known = getattr(sampler, "geometries", None)
    if known is None:
        return
    left_out = set(getattr(sampler, "levels_left_out", ()))
    drawn = [i for i in range(len(known)) if i not in left_out]
    shapes = [(g.n_samples, g.spatial_shape) for g in (geometry(s) for s in stacks)]
    expected = [(g.n_samples, g.spatial_shape) for g in known]
    if any(i >= len(shapes) or shapes[i] != expected[i] for i in drawn):
        msg = (
            f"PatchDataset got {len(shapes)} stack(s) of (samples, spatial shape) {shapes}, but its sampler "
            f"{type(sampler).__name__} was built over {len(expected)} of {expected}"
            f"{f' (drawing from stacks {drawn})' if len(drawn) < len(expected) else ''}: give the stacks the sampler "
            "was built over, in the same order"
        )
        raise ShapeMismatchError(msg)


def _check_one_size(specs: list[PatchSpec], stacks: list[Any]) -> None:
    """Refuse a batch whose patches differ in size: torch's default collate cannot stack them (it names no spec)."""
    size = specs[0].patch_size
    for s in specs:
        if s.patch_size != size:
            sizes: dict[tuple[int, ...], int] = {}
            for t in specs:
                sizes.setdefault(tuple(t.patch_size), t.stack)
            listed = ", ".join(f"{p} (stack {k}: {getattr(stacks[k], 'data_shape', '?')})" for p, k in sizes.items())
            msg = (
                f"a batch of {len(specs)} patches mixes patch sizes {listed}: torch's default collate_fn cannot "
                "stack them into one tensor. Read such a sampler (e.g. WholeSampleSampler over images of "
                "different sizes) with DataLoader(batch_size=1) or batch_size=None, use a sampler of one "
                "patch size (RandomSampler(stacks, patch_size=...), GridSampler), give PatchDataset a transform "
                "that crops or pads the items to one size, or pass PatchDataset(..., ragged=True) to get the items "
                "as they are for a collate_fn of your own"
            )
            raise ShapeMismatchError(msg)


def _spec(sampler: Sampler, channels: tuple[int, ...] | str | None, epoch: int, index: int) -> PatchSpec:
    spec = sampler.spec(index, epoch)
    return spec if isinstance(channels, str) else spec._replace(channels=channels)


def _specs(
    sampler: Sampler, channels: tuple[int, ...] | str | None, keys: Sequence[tuple[int, int]]
) -> list[PatchSpec]:
    """The specs of ``(epoch, index)`` keys: one ``epoch_specs`` call per run of keys of one epoch."""
    specs: list[PatchSpec] = []
    for epoch, run in itertools.groupby(keys, key=operator.itemgetter(0)):
        specs += sampler.epoch_specs(epoch, [i for _, i in run])
    return specs if isinstance(channels, str) else [s._replace(channels=channels) for s in specs]


class ReadAheadStats(NamedTuple):
    """Counters of a dataset's read-ahead in one process.

    Attributes
    ----------
    hits : int
        Batches served from a batch read ahead.
    misses : int
        Batches read when asked for (not predicted, or the first).
    dropped : int
        Batches read ahead (or started) and not served: not asked for next,
        read with another sampler or stacks, or over the budget once read.
    nbytes : int
        Bytes of the batches read ahead and not yet taken, plus those
        reserved for batches being read.
    peak_bytes : int
        The largest ``nbytes`` so far (never above ``max_bytes``).
    max_bytes : int
        The budget.
    """

    hits: int
    misses: int
    dropped: int
    nbytes: int
    peak_bytes: int
    max_bytes: int


_Batch = tuple[tuple[int, int], ...]


@dataclass(slots=True, eq=False)
class _Entry:
    """A batch read ahead: its future and the bytes it holds in the budget (0 once taken or released)."""

    future: Future[Any]
    held: int
    state: tuple[Any, ...]
    read: bool = False  # set under the lock once the thread settled its bytes


class _ReadAhead:
    """One process's read-ahead: a background thread and the batches it holds, within a byte budget.

    The wanted batches are read one at a time, in order: the next is started
    when the previous is done (so that at interpreter exit, which waits for
    the thread, at most the batch being read is finished). A batch is
    reserved its expected bytes (those of the last batch served) when
    started, and is started only while ``nbytes`` plus that reservation stays
    within ``max_bytes``; a finished batch holds its actual bytes until taken,
    or is dropped at once if they do not fit (batches of varying sizes).
    A batch is served only to a request made with the same dataset state
    (sampler, stacks, channels) it was read with.
    """

    def __init__(self, max_bytes: int) -> None:
        self.pid = current_pid()
        self.max_bytes = max_bytes
        self.expected = 0  # bytes of the last batch served (0: none yet, nothing is started)
        self.nbytes = self.peak = 0
        self.hits = self.misses = self.dropped = 0
        self.lock = threading.Lock()
        self.pending: dict[_Batch, _Entry] = {}  # started (running or done), not taken
        self.queue: list[_Batch] = []  # wanted, not started yet
        self.running = False
        self.state: tuple[Any, ...] = ()
        self.read: Callable[[tuple[Any, ...], Sequence[tuple[int, int]]], Any] | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lazystack-read-ahead")

    def take(self, batch: _Batch, state: tuple[Any, ...]) -> Future[Any] | None:
        """The future of ``batch`` if it was started with ``state`` (its bytes leave the budget), else None."""
        with self.lock:
            entry = self.pending.pop(batch, None)
            if entry is None or not _same(entry.state, state):
                if entry is not None:
                    self._release(entry)
                    self.dropped += 1
                self.misses += 1
                return None
            self.hits += 1
            self._release(entry)
            return entry.future

    def learn(self, nbytes: int) -> None:
        """Record the bytes of the batch just served (the reservation of the next ones)."""
        self.expected = nbytes

    def offer(
        self,
        batches: list[_Batch],
        state: tuple[Any, ...],
        read: Callable[[tuple[Any, ...], Sequence[tuple[int, int]]], Any],
    ) -> None:
        """Drop pending batches not in ``batches`` (or read with another state); read the others in order."""
        with self.lock:
            wanted = set(batches)
            for batch, entry in list(self.pending.items()):
                if batch not in wanted or not _same(entry.state, state):
                    del self.pending[batch]
                    self.dropped += 1
                    if entry.read:  # else: its bytes leave the budget when it is read
                        self._release(entry)
            self.state, self.read = state, read
            self.queue = [b for b in batches if b not in self.pending]
            self._start_next()

    def _release(self, entry: _Entry) -> None:
        self.nbytes -= entry.held
        entry.held = 0

    def _start_next(self) -> None:
        """Start the first queued batch if none is being read and its reservation fits (under the lock)."""
        if self.running or not self.queue or not self.expected or self.read is None:
            return
        if self.nbytes + self.expected > self.max_bytes:
            return
        batch = self.queue.pop(0)
        entry = _Entry(Future(), self.expected, self.state)
        try:
            self.pool.submit(self._run, batch, entry, self.read)
        except RuntimeError:  # the interpreter is shutting down: read nothing more
            self.queue.clear()
            return
        self.nbytes += entry.held
        self.peak = max(self.peak, self.nbytes)
        self.pending[batch] = entry
        self.running = True

    def _run(
        self, batch: _Batch, entry: _Entry, read: Callable[[tuple[Any, ...], Sequence[tuple[int, int]]], Any]
    ) -> None:
        """Read ``batch`` in the thread; settle its bytes and start the next batch before handing it over."""
        result: Any = None
        error: BaseException | None = None
        try:
            result = read(entry.state, batch)
        except BaseException as exc:  # handed to the caller, who reads the batch again
            error = exc
        try:
            actual = 0 if error is not None else sum(int(p.nbytes) for p in result[1])
            with self.lock:
                self.running = False
                entry.read = True
                if self.pending.get(batch) is entry and entry.held:
                    self.nbytes += actual - entry.held
                    entry.held = actual
                    if self.nbytes > self.max_bytes:  # larger than reserved and over the budget: not kept
                        del self.pending[batch]
                        self._release(entry)
                        self.dropped += 1
                        self.expected = max(self.expected, actual)  # reserve what such a batch takes
                    self.peak = max(self.peak, self.nbytes)
                else:  # taken (nothing held any more) or dropped while it was read
                    self._release(entry)
                self._start_next()  # before the hand-over: a caller woken by it finds the next batch started
        finally:  # whatever happened above, a caller waiting for this batch is woken
            if error is not None:
                entry.future.set_exception(error)
            else:
                entry.future.set_result(result)

    def stats(self) -> ReadAheadStats:
        with self.lock:
            return ReadAheadStats(self.hits, self.misses, self.dropped, self.nbytes, self.peak, self.max_bytes)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class EpochSampler:
    """DataLoader index sampler: ``(epoch, index)`` pairs of one epoch, this rank's share.

    Parameters
    ----------
    length : int or sized
        Indices per epoch, or a dataset: then its ``len()`` now, at each
        ``len()`` of the sampler and at each iteration, so an epoch follows a
        dataset whose ``sampler`` was replaced (as long as the new epoch is
        iterated from its start). Persistent DataLoader workers keep the
        dataset they were started with: after replacing its sampler, make a
        new DataLoader (the workers refuse the indices of an epoch started
        after the replacement, see Notes).
    rank, world_size : int
        This process's share of the epoch: positions ``rank, rank +
        world_size, ...`` of the epoch's order.
    shuffle : bool
        Visit the indices in a random order (a pure function of ``seed`` and
        the epoch); in order by default (a random sampler's specs are random
        already).
    seed : int
        Seed of the shuffle.
    pad : bool
        Repeat indices from the start so every rank gets the same count
        (as `DistributedSampler`);
        otherwise the last ranks may get one fewer.
    epoch : int
        Starting epoch.
    indices : sequence of int, optional
        The dataset's indices an epoch visits (default: all of them), e.g. a
        training split: what ``torch.utils.data.Subset`` and ``random_split``
        do, for the dataset itself (whose ``__getitems__`` takes the pairs,
        which torch's ``Subset`` and ``ConcatDataset`` do not):
        ``DataLoader(dataset, sampler=EpochSampler(dataset,
        indices=part.indices))``. The epoch's length is then theirs;
        ``shuffle``, ``pad`` and the ranks apply to them.

    Raises
    ------
    ValueError
        For a negative ``length``, ``seed`` or ``epoch``, or a ``rank`` not in
        ``range(world_size)``.
    TypeError
        For any of them that is not an integer (a boolean is not one), a
        ``shuffle`` or ``pad`` that is not a boolean, ``indices`` that are
        not a sequence of integers (a set, a mapping), or a
        ``torch.utils.data.Subset`` or ``ConcatDataset`` as ``length`` (they
        index with plain integers: the message says what to do instead).
    IndexError
        For an index of ``indices`` outside ``range(length)``.

    Notes
    -----
    Built over a [`PatchDataset`][PatchDataset], the pairs it yields are
    ``tuple`` subclasses (equal to the plain pairs) that also carry the
    dataset's identity and *generation*, read when an epoch's iteration
    starts: how many times the dataset's ``sampler`` (or ``stacks``,
    ``targets``, ``masks``, ``channels``, ``transform``, ``return_spec``,
    ``ragged``) has been assigned (outside DataLoader workers: a
    ``worker_init_fn`` may set up its worker's copy). A copy of that dataset at another
    generation refuses them with a
    [`LazyStackError`][lazystack.LazyStackError] instead of reading another
    sampler's patches: a persistent worker started before a replacement (make
    a new DataLoader), or the dataset itself when its ``sampler``, ``stacks``,
    ``targets`` or ``masks`` were replaced in the middle of the epoch (its
    remaining indices follow the old sampler). A ``transform``, ``channels``,
    ``return_spec`` or ``ragged`` assigned in the middle of an epoch applies
    at once in the process that assigned it (``num_workers=0``), as it always
    did. Indices of another dataset, plain integers and pairs are not checked.
    """

    def __init__(
        self,
        length: int | Any,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        pad: bool = True,
        epoch: int = 0,
        indices: Sequence[int] | None = None,
    ) -> None:
        #: the dataset whose current ``len()`` is the epoch's length (None: ``length`` was a number)
        sized = hasattr(length, "__len__") and not hasattr(length, "__index__") and not _is_bool(length)
        if sized:
            _check_not_a_torch_wrapper(length)
        self.dataset: Any = length if sized else None
        #: the dataset's indices an epoch visits (None: all)
        self.indices: np.ndarray | None = None
        self._length = _check_length(_integer("length", length)) if self.dataset is None else self.length
        if indices is not None:
            if isinstance(indices, (str, bytes, Mapping, Set)) or not hasattr(indices, "__len__"):
                msg = (
                    f"indices must be a sequence of integers (the dataset's indices an epoch visits), got "
                    f"{indices!r} ({type(indices).__name__}): accepted are a list, tuple, range or array"
                )
                raise TypeError(msg)
            self.indices = _index_array(list(indices) if not hasattr(indices, "dtype") else indices, self.length)
        self.rank = _integer("rank", rank)
        self.world_size = _integer("world_size", world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            msg = f"rank {rank!r} and world_size {world_size!r}: need world_size >= 1 and 0 <= rank < world_size"
            raise ValueError(msg)
        self.shuffle = _flag("shuffle", shuffle)
        self.seed = _non_negative("seed", seed)
        self.pad = _flag("pad", pad)
        self.epoch = _non_negative("epoch", epoch)

    @property
    def length(self) -> int:
        """Indices per epoch: the number of ``indices`` given, else the dataset's current ``len()`` or the number."""
        if self.indices is not None:
            return len(self.indices)
        if self.dataset is not None:
            self._length = _check_length(len(self.dataset))
        return self._length

    @length.setter
    def length(self, value: int) -> None:
        self.dataset = self.indices = None  # a number given now: no longer follows the dataset or the indices
        self._length = _check_length(_integer("length", value))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (reaches persistent workers through the indices).

        Parameters
        ----------
        epoch : int
            Non-negative epoch number.
        """
        self.epoch = _non_negative("epoch", epoch)

    def order(self) -> list[int]:
        """The whole epoch's index order, padded (before sharding).

        A list of every index: for large epochs iterate the sampler instead,
        which computes this rank's share as it goes.
        """
        n = self.length
        return [int(i) for i in self._ordered(range(self._padded_length(n)), n)]

    def _padded_length(self, n: int) -> int:
        return n + (-n % self.world_size if self.pad and n else 0)

    def _ordered(self, positions: range, n: int) -> Iterator[int]:
        """The indices at some positions of the padded order of ``n``, lazily (the shuffle is drawn now, eagerly)."""
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else None
        if self.indices is not None:
            chosen = self.indices.tolist()
            if perm is None:
                return (chosen[p % n] for p in positions)
            return (chosen[int(perm[p % n])] for p in positions)
        if perm is None:
            return (p % n for p in positions)  # padding repeats the order from its start
        return (int(perm[p % n]) for p in positions)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, n = self.epoch, self.length
        share = range(self.rank, self._padded_length(n), self.world_size)
        if not isinstance(self.dataset, PatchDataset):
            return ((epoch, i) for i in self._ordered(share, n))
        token = self.dataset._token()  # the dataset's state now: a worker's copy of another state refuses the pairs
        return (_EpochKey(epoch, i, token) for i in self._ordered(share, n))

    def __len__(self) -> int:
        return len(range(self.rank, self._padded_length(self.length), self.world_size))


def _check_not_a_torch_wrapper(dataset: Any) -> None:
    """Refuse torch's ``Subset`` / ``ConcatDataset``: they index with plain integers, not EpochSampler's pairs."""
    if not type(dataset).__module__.startswith("torch.utils.data"):
        return
    data = _torch().utils.data
    if isinstance(dataset, data.Subset):
        msg = (
            f"EpochSampler got a torch.utils.data.Subset (of {type(dataset.dataset).__name__}; random_split's "
            "parts are Subsets too): its (epoch, index) pairs cannot pass through a Subset, which indexes a list "
            "with them. Give the DataLoader the dataset itself and this sampler the subset's indices: "
            "DataLoader(dataset, sampler=EpochSampler(dataset, indices=subset.indices))"
        )
        raise TypeError(msg)
    if isinstance(dataset, data.ConcatDataset):
        msg = (
            f"EpochSampler got a torch.utils.data.ConcatDataset of {len(dataset.datasets)} datasets: its (epoch, "
            "index) pairs cannot pass through a ConcatDataset, which compares them with integers. Build one "
            "PatchDataset over all the stacks (its sampler over stacks_a + stacks_b), or use plain integer indices "
            "(DataLoader's default sampler) with each dataset's set_epoch() and persistent_workers=False"
        )
        raise TypeError(msg)


class ChunkLocalSampler(Sampler):
    """Groups of patches drawn from the chunks a base sampler's patch lands in (opt-in, for throughput).

    Index ``i`` belongs to the group starting at ``a = i - i % per_chunk``:
    index ``a`` is the base sampler's spec of ``a``, unchanged (the
    *anchor*), and each other index of the group is a patch of the same
    stack, sample, channels and size whose corner is drawn uniformly (a pure
    function of ``seed``, the epoch and ``i``) from the anchor's *cell*: in
    each spatial dim, the corners whose patch starts in the same ``window``
    as the anchor's and ends in the same one (for a patch no larger than a
    window: those whose patch stays inside the anchor's window, or those
    whose patch reaches into the next one). With ``window`` the chunk shape,
    a group's patches touch exactly the chunks the anchor touches: one chunk
    for most small patches, two or four for those over a chunk border, where
    ``per_chunk`` independent patches decode about ``per_chunk`` times as
    many.

    Parameters
    ----------
    base : Sampler
        Draws the anchors (random, stratified, foreground ...).
    stacks : sequence of LazyImageStack
        The stacks ``base`` was built over (their chunk shapes give ``window``).
    per_chunk : int
        Patches per group (1: the base sampler unchanged).
    seed : int
        Seed of the positions within a group.
    window : int or sequence of int, optional
        Box size in the spatial dims (``(Z)YX``) for every stack; by default
        each stack's own storage chunk shape (which needs a stack whose
        reader has a regular chunk grid over the stack's own axes).

    Raises
    ------
    ValueError
        For ``per_chunk < 1`` or a boolean ``per_chunk``, a negative ``seed``, a window of the wrong
        length or not positive, stacks other than those of ``base`` (when it
        tells them), or a stack whose chunk shape is unknown (give ``window``).
    TypeError
        For a ``per_chunk`` that is not an integer, or a ``seed`` that is
        not one (a boolean is not one).

    Notes
    -----
    What it costs in diversity: a batch of ``B`` patches comes from about
    ``B / per_chunk`` places instead of ``B``, and the patches of a group
    overlap one another more often than independent ones (measured for 64x64
    patches, 256x256 chunks, batch 32, ``per_chunk=8``: 5.7 distinct
    chunks a batch on average instead of 47). What it keeps: when the base
    sampler's corners are uniform over the valid positions (``RandomSampler``),
    so is every patch's corner (the cells split the valid corners, a cell is
    drawn as the anchor's, in proportion to its size, then the corner
    uniformly within it): over an epoch, positions cover the image as
    uniformly as the base sampler's (the tests check it). Keep ``per_chunk`` well below the batch
    size so that a batch mixes several places.

    A group is ``per_chunk`` consecutive indices, so the gain needs batches of
    consecutive indices: an in-order [`EpochSampler`][EpochSampler] (a
    shuffled one scatters each group over the epoch; the patches are the
    same, the decoding is not saved). Over ``world_size`` DDP ranks, each
    rank gets every ``world_size``-th index, so ``per_chunk / world_size``
    patches of each group: multiply ``per_chunk`` by ``world_size`` to keep
    the per-rank grouping.

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import LazyImageStack, RandomSampler
    >>> stack = LazyImageStack(np.zeros((2, 512, 512), np.uint8), "SYX")
    >>> local = ChunkLocalSampler(RandomSampler([stack], 64, 32, seed=1), [stack], per_chunk=8, window=256)
    >>> len({(s.sample, s.coords[0] // 256, s.coords[1] // 256) for s in local.epoch_specs(0)[:8]}) <= 4
    True
    """

    def __init__(
        self,
        base: Sampler,
        stacks: Sequence[Any],
        *,
        per_chunk: int = 8,
        seed: int = 0,
        window: int | Sequence[int] | None = None,
    ) -> None:
        self.base = base
        self.per_chunk = _as_int("per_chunk", per_chunk)
        if self.per_chunk < 1 or _is_bool(per_chunk):
            msg = f"per_chunk must be an integer >= 1 (patches per group), got {per_chunk!r}"
            raise ValueError(msg)
        self.seed = _non_negative("seed", seed)
        self.channels = getattr(base, "channels", None)
        self.levels_left_out = getattr(base, "levels_left_out", ())
        self._anchor: tuple[tuple[int, int], PatchSpec] | None = None
        self.spatial_shapes = [geometry(s).spatial_shape for s in stacks]
        known = getattr(base, "geometries", None)
        if known is not None and [g.spatial_shape for g in known] != self.spatial_shapes:
            msg = (
                f"ChunkLocalSampler got {len(self.spatial_shapes)} stacks of spatial shapes {self.spatial_shapes}, "
                f"but its base sampler was built over {len(known)} of shapes {[g.spatial_shape for g in known]}: "
                "give the stacks the base sampler was built over"
            )
            raise ValueError(msg)
        if window is None:
            self.windows = [_chunk_window(s, len(g)) for s, g in zip(stacks, self.spatial_shapes, strict=True)]
        else:
            self.windows = [_window(window, len(g)) for g in self.spatial_shapes]

    def __len__(self) -> int:
        return len(self.base)

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index`` in ``epoch`` (see the class description)."""
        return self.epoch_specs(epoch, [self._check_index(index)])[0]

    def epoch_specs(self, epoch: int = 0, indices: Sequence[int] | None = None) -> list[PatchSpec]:
        """The specs of an epoch (or of some of its indices), in order, drawn all at once.

        The anchors come from one ``base.epoch_specs`` call; the corner of
        every other index in dim ``d`` from draw ``d`` of the index's own
        counter-based hash stream under ``(seed, epoch)`` (as
        [`RandomSampler`][lazystack.RandomSampler]'s), so each spec is the
        same as [`spec()`][spec] of its index alone.

        Parameters
        ----------
        epoch : int
            Epoch number (non-negative).
        indices : sequence of int, optional
            Indices to compute; all of ``range(len(self))`` by default.

        Returns
        -------
        list of PatchSpec
        """
        e = _non_negative("epoch", epoch)
        idx = np.arange(len(self), dtype=np.int64) if indices is None else _index_array(indices, len(self))
        if not idx.size:
            return []
        anchor_of = (idx - idx % self.per_chunk).tolist()
        known: dict[int, PatchSpec] = {}
        memo = self._anchor  # the last group's anchor: single-index calls in order compute it once
        if memo is not None and memo[0][1] == e:
            known[memo[0][0]] = memo[1]
        todo = sorted(set(anchor_of) - known.keys())
        if todo:
            known.update(zip(todo, self.base.epoch_specs(e, todo), strict=True))
        self._anchor = ((anchor_of[-1], e), known[anchor_of[-1]])
        u = _uniforms(_hash_key(self.seed, e), idx, max(len(g) for g in self.spatial_shapes)).tolist()
        out = []
        for i, a, draws in zip(idx.tolist(), anchor_of, u, strict=True):
            anchor = known[a]
            if i == a:
                out.append(anchor)
                continue
            coords = []
            for c, p, w, n, x in zip(
                anchor.coords,
                anchor.patch_size,
                self.windows[anchor.stack],
                self.spatial_shapes[anchor.stack],
                draws,
                strict=False,
            ):
                if not 0 <= c <= n - p:  # an anchor leaving the image (padded grids): keep its position
                    coords.append(c)
                    continue
                lo, hi = _cell(c, p, w)
                span = min(hi, n - p) - lo + 1
                coords.append(lo + min(int(x * span), span - 1))
            out.append(anchor._replace(coords=tuple(coords)))
        return out


def _cell(corner: int, patch: int, window: int) -> tuple[int, int]:
    """The cell ``[lo, hi]`` of corners holding ``corner``: the corners whose patch lies in the same windows.

    The corners whose patch starts in the same window as ``corner``'s and
    ends in the same window as its: for a patch no larger than a window,
    window ``k``'s corners split into those whose patch stays inside window
    ``k`` and those whose patch reaches into window ``k + 1``. The cells
    split all corners, so a uniform corner's cell is drawn in proportion to
    its size.
    """
    start = corner // window * window
    end = (corner + patch - 1) // window * window  # the window the patch ends in
    return max(start, end - patch + 1), min(start + window - 1, end + window - patch)


def _window(window: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    try:
        if isinstance(window, (Sequence, np.ndarray)):
            w = tuple(operator.index(v) for v in window)
        else:
            w = (operator.index(window),) * ndim
    except TypeError:
        w = ()
    if len(w) != ndim or any(v < 1 for v in w):
        msg = f"window {window!r}: expected one positive size per spatial dim ({ndim}) or one int"
        raise ValueError(msg)
    return w


def _chunk_window(stack: Any, ndim: int) -> tuple[int, ...]:
    """A stack's storage chunk shape in its spatial dims (``(Z)YX``), from its reader and original axes."""
    reader = getattr(stack, "reader", None)
    axes = str(getattr(stack, "original_axes", ""))
    shape = tuple(getattr(reader, "shape", ()))
    chunks = getattr(reader, "chunks", None)
    letters = "ZYX"[-ndim:] if ndim <= 3 else ""
    if (
        chunks is not None
        and len(axes) == len(shape) == len(chunks)
        and tuple(getattr(stack, "original_data_shape", ())) == shape
        and all(a in axes for a in letters)
    ):
        sizes = [c if isinstance(c, (int, np.integer)) else c[0] for c in chunks]  # zarr-style or dask-style
        return tuple(int(sizes[axes.index(a)]) for a in letters)
    msg = (
        f"cannot tell the chunk shape of stack {getattr(stack, 'source', stack)!r} in its spatial dims "
        "(a view or a reader without a chunk grid): give ChunkLocalSampler a window="
    )
    raise ValueError(msg)
