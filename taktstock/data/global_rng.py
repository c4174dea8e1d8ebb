"""Reads of a user dataset under per-sample seeded global generators, at a per-batch cost.

A user `Dataset` may draw random numbers in `__getitem__` from torch's, Python's or NumPy's global
generators. For the draws to be reproducible with any number of workers and after a resume, each read
runs with those generators seeded by its own (seed, epoch, index). Seeding costs 3-8 us per generator
and saving + restoring NumPy's and Python's whole states 30-70 us, which on a small item costs more than
the read itself. So `SeededReads` seeds only the generators a dataset is seen to use:

* A batch is first read with the unused generators left alone, and their states are compared before and
  after (a byte compare per batch). A read that draws nothing from a generator does not depend on its
  state, so an unchanged state proves the batch equals its seeded read.
* A changed state marks the generator used, and the batch is read again with it seeded per sample (once
  per dataset and process: from then on that generator is seeded before every read).
* In the main process (`data.num_workers: 0`) the used generators are saved once per batch and restored
  afterwards, so the training's own random stream (dropout, ...) is untouched; worker processes have no
  other use for them.

The one case this cannot see: a read that draws inside its own save-and-restore of a global generator
(`torch.random.fork_rng`). Such a dataset sets `seed_global_rngs = True` (every generator seeded on every
read, as a class attribute).
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

GENERATORS = ("torch", "python", "numpy")
OPT_IN = "seed_global_rngs"  # dataset attribute: seed every generator on every read


class _Torch:
    name = "torch"

    @staticmethod
    def state() -> Any:
        return torch.default_generator.get_state()  # includes the cached normal samples

    @staticmethod
    def same(a: Any, b: Any) -> bool:
        return bytes(a.numpy()) == bytes(b.numpy())

    @staticmethod
    def restore(state: Any) -> None:
        torch.default_generator.set_state(state)

    @staticmethod
    def seed(value: int) -> None:
        torch.default_generator.manual_seed(value)  # CPU only: torch.manual_seed would reseed CUDA too


class _Python:
    name = "python"
    state = staticmethod(random.getstate)  # includes gauss_next
    restore = staticmethod(random.setstate)

    @staticmethod
    def same(a: Any, b: Any) -> bool:
        return a == b

    @staticmethod
    def seed(value: int) -> None:
        random.seed(value)


class _NumPy:
    """NumPy's legacy global `RandomState`: its full state costs ~50 us to read, so the per-batch check
    compares the Mersenne-Twister words in place (0.3 us). The legacy Gaussian cache is not in those words,
    but it only fills through a draw that moves them; a state whose cache is full is treated as used."""

    name = "numpy"

    def __init__(self) -> None:
        bitgen = np.random.mtrand._rand._bit_generator
        self._words = (ctypes.c_char * (625 * 4)).from_address(bitgen.ctypes.state_address)  # key[624], pos
        self._clean: bytes | None = None  # words last seen with an empty Gaussian cache

    def state(self) -> Any:
        words = bytes(self._words)
        if words != self._clean:
            if np.random.get_state()[3]:  # a cached Gaussian: the next normal draw would not move the words
                return None
            self._clean = words
        return words

    def same(self, a: Any, b: Any) -> bool:
        return a is not None and a == b

    @staticmethod
    def restore(state: Any) -> None:
        key = np.frombuffer(state, np.uint32, 624)
        pos = int(np.frombuffer(state, np.int32, 1, 624 * 4)[0])
        np.random.set_state(("MT19937", key, pos, 0, 0.0))

    @staticmethod
    def seed(value: int) -> None:
        np.random.seed(value % 2**32)


class _NumPyFull(_NumPy):
    """Save and restore of NumPy's whole legacy state (used generators in the main process)."""

    state = staticmethod(np.random.get_state)
    restore = staticmethod(np.random.set_state)


class SeededReads:
    """Reads items of `dataset` as if every read ran with the global generators seeded by its own seed."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.used: set[str] = set(GENERATORS) if getattr(dataset, OPT_IN, False) else set()
        self._probes: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:  # sent to worker processes: the in-place NumPy view is per process
        return {"dataset": self.dataset, "used": set(self.used), "_probes": None}

    def _gens(self) -> dict[str, Any]:
        if self._probes is None:
            self._probes = {"torch": _Torch(), "python": _Python(), "numpy": _NumPy()}
        return self._probes

    def read(self, fetch: Callable[[], Any], seeds: Callable[[], Sequence[int]], per_item: Callable[[int], Any]) -> Any:
        """The items of one batch: `fetch()` reads them all with no seeding (a list of items, or a batch from
        the dataset's own `__getitems__`); else a list of `per_item(k)`, read with the generators seeded by
        `seeds()[k]`. `fetch` is used while the dataset is not known to draw from any generator."""
        gens, main = self._gens(), get_worker_info() is None
        saved: dict[str, Any] = {}  # whole states to put back at the end (main process only)
        try:
            while True:
                probe, forced = {}, set()
                for g in GENERATORS:
                    if g not in self.used:
                        state = gens[g].state()
                        if state is None:
                            forced.add(g)
                        else:
                            probe[g] = state
                seeded = self.used | forced
                if main:
                    saved.update({g: _FULL[g].state() for g in seeded if g not in saved})
                items = self._seeded(per_item, seeds, seeded) if seeded else fetch()
                moved = {g for g, s in probe.items() if not gens[g].same(s, gens[g].state())}
                if not moved:  # no unseeded generator was drawn from: these reads equal their seeded reads
                    return items
                for g in moved:  # read again with them seeded, from the state they had before
                    if main:
                        gens[g].restore(probe[g])
                        saved[g] = _FULL[g].state()
                self.used |= moved
        finally:
            for g, s in saved.items():
                _FULL[g].restore(s)

    @staticmethod
    def _seeded(per_item: Callable[[int], Any], seeds: Callable[[], Sequence[int]], generators: set[str]) -> list[Any]:
        seeders = [_SEED[g] for g in GENERATORS if g in generators]
        out = []
        for k, value in enumerate(seeds()):
            for seed in seeders:
                seed(value)
            out.append(per_item(k))
        return out


_FULL = {"torch": _Torch, "python": _Python, "numpy": _NumPyFull}
_SEED = {"torch": _Torch.seed, "python": _Python.seed, "numpy": _NumPy.seed}
