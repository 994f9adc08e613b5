"""ChunkCache ("lru" and "2q") against a plain-list model of its documented policy (hypothesis state machine).

After every step the cache must agree with the model on which keys it
holds, which array each key returns (the very object put, read-only), the
bytes held (all and on probation) and the counters, and keep its bounds:
bytes held == the sum of the held arrays' bytes <= ``max_bytes``; probation
<= its share of the bound unless it holds one chunk only.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lazystack.io.cache import GHOST_FRACTION, PROBATION_FRACTION, ChunkCache

KEYS = st.integers(0, 11)
SIZES = st.integers(0, 140)  # bytes (uint8 arrays); the bound is drawn from 0..400


class _Model:
    """The documented policy, in lists: ``probation`` oldest first, ``main`` least recent first."""

    def __init__(self, max_bytes: int, two_q: bool) -> None:
        self.max_bytes = max_bytes
        self.two_q = two_q
        self.reset()

    def reset(self) -> None:
        self.main: list[tuple[int, np.ndarray]] = []
        self.probation: list[tuple[int, np.ndarray]] = []
        self.ghost: list[tuple[int, int]] = []  # (key, bytes), oldest first
        self.hits = self.misses = self.evictions = self.promotions = 0

    @staticmethod
    def _pop(part: list, key: int) -> np.ndarray | None:
        for k, (held, array) in enumerate(part):
            if held == key:
                del part[k]
                return array
        return None

    def nbytes(self) -> int:
        return sum(a.nbytes for _, a in self.main + self.probation)

    def probation_nbytes(self) -> int:
        return sum(a.nbytes for _, a in self.probation)

    def find(self, key: int) -> np.ndarray | None:
        array = self._pop(self.main, key)
        if array is None:
            array = self._pop(self.probation, key)
            if array is not None:
                self.promotions += 1
        if array is not None:
            self.main.append((key, array))
        return array

    def get(self, key: int) -> np.ndarray | None:
        array = self.find(key)
        if array is None:
            self.misses += 1
        else:
            self.hits += 1
        return array

    def get_all(self, keys: list[int]) -> list[np.ndarray] | None:
        held = {k for k, _ in self.main + self.probation}
        if not all(k in held for k in keys):
            return None
        found = [self.find(k) for k in keys]
        self.hits += len(keys)
        return found  # type: ignore[return-value]

    def put(self, key: int, array: np.ndarray) -> None:
        if self.max_bytes == 0 or array.nbytes > self.max_bytes:  # 0: disabled, keeps nothing
            return
        if self._pop(self.main, key) is not None:
            self.main.append((key, array))
        elif self._pop(self.probation, key) is not None:
            self.probation.append((key, array))
        elif not self.two_q:
            self.main.append((key, array))
        elif any(k == key for k, _ in self.ghost):
            self.ghost = [(k, n) for k, n in self.ghost if k != key]
            self.main.append((key, array))
            self.promotions += 1
        else:
            self.probation.append((key, array))
        self.evict(keep_newest_main=any(k == key for k, _ in self.main))

    def put_if_seen(self, key: int, array: np.ndarray) -> None:
        """2q: a key neither held nor in the ghost list only goes to the ghost list; else (and lru) ``put``."""
        if self.max_bytes == 0:
            return
        held = any(k == key for k, _ in self.main + self.probation)
        if self.two_q and not held and not any(k == key for k, _ in self.ghost):
            if array.nbytes <= self.max_bytes:
                self.ghost.append((key, array.nbytes))
                self.trim_ghost()
            return
        self.put(key, array)

    def _drop_probation(self) -> None:
        key, array = self.probation.pop(0)
        self.evictions += 1
        self.ghost.append((key, array.nbytes))
        self.trim_ghost()

    def trim_ghost(self) -> None:
        while self.ghost and sum(n for _, n in self.ghost) > int(self.max_bytes * GHOST_FRACTION):
            self.ghost.pop(0)

    def evict(self, keep_newest_main: bool = False) -> None:
        """Probation down to its share (keeping its newest), then main (LRU first) down to the bound.

        A chunk just put in the main part is dropped after the chunks on probation.
        """
        while self.probation_nbytes() > int(self.max_bytes * PROBATION_FRACTION) and len(self.probation) > 1:
            self._drop_probation()
        while self.nbytes() > self.max_bytes:
            if self.main and not (keep_newest_main and len(self.main) == 1 and self.probation):
                self.main.pop(0)
                self.evictions += 1
            else:
                self._drop_probation()

    def resize(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.evict()
        self.trim_ghost()


class CacheMachine(RuleBasedStateMachine):
    """Random puts, looks-ups, resizes and clears on a ChunkCache and on the model."""

    cache: ChunkCache
    model: _Model

    @initialize(max_bytes=st.integers(0, 400), policy=st.sampled_from(["lru", "2q"]))
    def start(self, max_bytes: int, policy: str) -> None:
        self.cache = ChunkCache(max_bytes, policy=policy)
        self.model = _Model(max_bytes, policy == "2q")

    @rule(key=KEYS, size=SIZES)
    def put(self, key: int, size: int) -> None:
        array = np.zeros(size, dtype=np.uint8)
        self.cache.put(key, array)
        self.model.put(key, array)

    @rule(key=KEYS, size=SIZES)
    def put_if_seen(self, key: int, size: int) -> None:
        array = np.zeros(size, dtype=np.uint8)
        stored = self.cache.put_if_seen(key, array)
        self.model.put_if_seen(key, array)
        kept = any(k == key and a is array for k, a in self.model.main + self.model.probation)
        assert stored == kept, "put_if_seen's result says whether this chunk was stored"

    @rule(key=KEYS)
    def get(self, key: int) -> None:
        got = self.cache.get(key)
        expected = self.model.get(key)
        if expected is None:
            assert got is None
        else:
            assert got is not None
            assert np.shares_memory(got, expected) or expected.size == 0
            assert got.shape == expected.shape
            assert not got.flags.writeable

    @rule(keys=st.lists(KEYS, max_size=5))
    def get_many(self, keys: list[int]) -> None:
        got = self.cache.get_many(keys)
        expected = [self.model.get(k) for k in keys]
        assert [g is None for g in got] == [e is None for e in expected]

    @rule(keys=st.lists(KEYS, max_size=4))
    def get_all(self, keys: list[int]) -> None:
        got = self.cache.get_all(keys)
        expected = self.model.get_all(keys)
        assert (got is None) == (expected is None)
        if got is not None and expected is not None:
            assert all(np.shares_memory(g, e) for g, e in zip(got, expected, strict=True) if e.size)

    @rule(max_bytes=st.integers(0, 400))
    def resize(self, max_bytes: int) -> None:
        self.cache.resize(max_bytes)
        self.model.resize(max_bytes)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.reset()

    @invariant()
    def agrees_with_the_model(self) -> None:
        cache, model = self.cache, self.model
        s = cache.stats()
        held = [k for k, _ in model.main + model.probation]
        assert sorted(k for k in range(12) if k in cache) == sorted(held)
        assert len(cache) == len(held) == s.entries
        assert s.nbytes == cache.nbytes == model.nbytes()
        assert s.probation_nbytes == model.probation_nbytes()
        assert (s.hits, s.misses, s.evictions, s.promotions) == (
            model.hits,
            model.misses,
            model.evictions,
            model.promotions,
        )
        assert s.max_bytes == model.max_bytes

    @invariant()
    def keeps_its_bounds(self) -> None:
        s = self.cache.stats()
        assert 0 <= s.probation_nbytes <= s.nbytes <= s.max_bytes
        if self.cache.policy == "lru":
            assert s.probation_nbytes == 0
        elif len(self.model.probation) > 1:
            assert s.probation_nbytes <= int(s.max_bytes * PROBATION_FRACTION)
        ghost = self.model.ghost
        assert sum(n for _, n in ghost) <= int(s.max_bytes * GHOST_FRACTION)
        assert not {k for k, _ in ghost} & {k for k, _ in self.model.main + self.model.probation}


CacheMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestChunkCacheAgreesWithItsModel = CacheMachine.TestCase
