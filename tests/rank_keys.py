"""Which training samples each rank of a run read: DDP tests prove that two ranks split the data.

`install(folder, "module:SplitClass", ...)` writes a callback module, `rank_keys_recorder.py`, into `folder`: put
the folder on the run's PYTHONPATH, add `rank_keys_recorder:DumpKeys` to `train.callbacks` and set `DUMP_DIR`.
Importing it wraps the split classes' `__getitem__` and `get_batch` so that every training key a process reads,
(epoch, index), is recorded (evaluation reads plain indices, not recorded); at the end of training each rank
writes `keys{RANK}.json` into `DUMP_DIR`. Keep `data.num_workers` at 0, so the reads happen in the rank's process.

A run that ignored `--nproc-per-node` writes one file; one whose ranks each read the whole global batch
writes overlapping ones: `assert_ranks_split` fails on both.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

RECORDER = """
import json, os
from importlib import import_module

SEEN = []


def _wrap(cls):
    getitem = cls.__getitem__

    def __getitem__(self, key):
        if isinstance(key, tuple):  # training keys are (epoch, index)
            SEEN.append((int(key[0]), int(key[1])))
        return getitem(self, key)

    cls.__getitem__ = __getitem__
    get_batch = getattr(cls, "get_batch", None)
    if get_batch is not None:

        def batch(self, indices, epoch=None):
            if epoch is not None:
                SEEN.extend((int(epoch), int(i)) for i in indices)
            return get_batch(self, indices, epoch)

        cls.get_batch = batch


for _path in {classes!r}:
    _module, _name = _path.split(":")
    _wrap(getattr(import_module(_module), _name))


class DumpKeys:
    def on_train_end(self, trainer):
        with open(os.path.join(os.environ["DUMP_DIR"], f"keys{{os.environ.get('RANK', '0')}}.json"), "w") as f:
            json.dump(SEEN, f)
"""

CALLBACK = "rank_keys_recorder:DumpKeys"


def install(folder: Path, *classes: str) -> Path:
    """Write the recorder module for these split classes ("module:Class") into `folder`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rank_keys_recorder.py").write_text(RECORDER.format(classes=list(classes)))
    return folder


def rank_keys(dump: Path) -> dict[int, set[tuple[int, int]]]:
    """rank -> the (epoch, index) keys it read, from the keys{RANK}.json files in `dump`."""
    return {int(p.stem[4:]): {(e, i) for e, i in json.loads(p.read_text())} for p in sorted(dump.glob("keys*.json"))}


def assert_ranks_split(dump: Path, world_size: int, expected: set[tuple[int, int]]) -> None:
    """Each of `world_size` ranks read a non-empty share, no key was read by two ranks, and together they read
    exactly `expected` (every sample of every epoch the one-process run reads)."""
    keys = rank_keys(dump)
    assert sorted(keys) == list(range(world_size)), f"ranks that recorded their reads: {sorted(keys)}, expected {world_size}"
    assert all(keys[r] for r in keys), {r: len(k) for r, k in keys.items()}
    for a, b in itertools.combinations(keys, 2):
        assert not keys[a] & keys[b], f"ranks {a} and {b} both read {sorted(keys[a] & keys[b])[:5]}..."
    together = set().union(*keys.values())
    assert together == expected, f"missing {sorted(expected - together)[:5]}, extra {sorted(together - expected)[:5]}"


def checkpoint_world_size(run: Path) -> int:
    """The world size recorded in the run's newest valid checkpoint (what taktstock resumes from)."""
    from taktstock.checkpoint.manager import load_checkpoint
    from tests.resume_harness import newest_valid_checkpoint

    info = newest_valid_checkpoint(run)
    assert info is not None, f"no valid checkpoint in {run}"
    world_size = load_checkpoint(info.path)["world_size"]
    assert isinstance(world_size, int)
    return world_size
