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
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.errors import ChannelIndexError, MissingDependencyError
from .ops.batch import extract_patches
from .sampling import PatchSpec, Sampler, check_pairs, geometry
from .sampling.samplers import resolve_channels

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


__all__ = ["EpochSampler", "PatchDataset"]

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

    Raises
    ------
    ChannelIndexError
        Before any batch, when stacks whose patches would be batched together
        have different channel counts and no channel selection makes them equal.
    ShapeMismatchError
        When targets or masks do not pair with the inputs.

    Notes
    -----
    It is a `torch.utils.data.Dataset` by protocol (``__len__``,
    ``__getitem__``, ``__getitems__``), not by inheritance, so that this
    module imports without torch.

    An index is an ``int`` (of the dataset's current epoch) or an ``(epoch,
    index)`` pair (what [`EpochSampler`][EpochSampler] yields). With persistent
    workers, use [`EpochSampler`][EpochSampler] and its ``set_epoch``: the workers'
    copies of the dataset do not see [`set_epoch()`][set_epoch] calls made later in
    the main process.
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
    ) -> None:
        _torch()
        self.stacks = list(stacks)
        self.sampler = sampler
        self.targets = None if targets is None else list(targets)
        self.masks = None if masks is None else list(masks)
        groups = [self.stacks] + [g for g in (self.targets, self.masks) if g is not None]
        names = ["input"] + [n for n, g in (("target", self.targets), ("mask", self.masks)) if g is not None]
        check_pairs(*groups, names=names)
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
        self.return_spec = return_spec
        self.epoch = operator.index(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of plain integer indices (in this process only).

        Parameters
        ----------
        epoch : int
            Non-negative epoch number.
        """
        self.epoch = operator.index(epoch)

    def spec(self, index: int | tuple[int, int]) -> PatchSpec:
        """The spec of an index (``int`` or ``(epoch, index)``), with the dataset's channel selection."""
        if isinstance(index, (tuple, list)):
            epoch, i = (operator.index(v) for v in index)
        else:
            epoch, i = self.epoch, operator.index(index)
        spec = self.sampler.spec(i, epoch)
        if not isinstance(self.channels, str):
            spec = spec._replace(channels=self.channels)
        return spec

    def __getitem__(self, index: int | tuple[int, int]) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int | tuple[int, int]]) -> list[Any]:
        """Read a batch of items in one [`lazystack.extract_patches()`][lazystack.extract_patches] call."""
        specs = [self.spec(i) for i in indices]
        requests = [(self.stacks[s.stack], s.sample, s.channels, s.coords, s.patch_size) for s in specs]
        n = len(specs)
        for group in (self.targets, self.masks):
            if group is not None:
                requests += [(group[s.stack], s.sample, None, s.coords, s.patch_size) for s in specs]
        patches = extract_patches(requests)
        torch = _torch()
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


class EpochSampler:
    """DataLoader index sampler: ``(epoch, index)`` pairs of one epoch, this rank's share.

    Parameters
    ----------
    length : int or sized
        Indices per epoch (or a dataset, whose ``len`` is used).
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
    ) -> None:
        self.length = length if isinstance(length, int) else len(length)
        self.rank = operator.index(rank)
        self.world_size = operator.index(world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            msg = f"rank {rank!r} and world_size {world_size!r}: need world_size >= 1 and 0 <= rank < world_size"
            raise ValueError(msg)
        self.shuffle = shuffle
        self.seed = operator.index(seed)
        self.pad = pad
        self.epoch = operator.index(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (reaches persistent workers through the indices).

        Parameters
        ----------
        epoch : int
            Non-negative epoch number.
        """
        self.epoch = operator.index(epoch)

    def order(self) -> list[int]:
        """The whole epoch's index order, padded (before sharding)."""
        order = (
            [int(i) for i in np.random.default_rng([self.seed, self.epoch]).permutation(self.length)]
            if self.shuffle
            else list(range(self.length))
        )
        if self.pad and order and len(order) % self.world_size:
            extra = self.world_size - len(order) % self.world_size
            order += (order * (extra // len(order) + 1))[:extra]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in self.order()[self.rank :: self.world_size]])

    def __len__(self) -> int:
        return len(self.order()[self.rank :: self.world_size])
