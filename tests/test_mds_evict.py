"""Datasets larger than the disk: the shard-blocked order (data.shuffle_block) and the bounded cache (data.cache_limit).

The order is a pure function of (seed, epoch) and the shards, not of the limit: a run whose cache evicts
shards is the unlimited run bit for bit, and a SIGKILL + resume with the limit is the uninterrupted run.
The cache's own log (TAKTSTOCK_MDS_CACHE_LOG: one line per download and eviction, with the cache's bytes
after it, measured under the cache lock) shows the limit held at every point the cache grew.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from taktstock.data.mds.cache import LOG_ENV, cache_bytes
from tests import rank_keys, test_mds
from tests.conftest import require, tiny_config, write_config
from tests.resume_harness import ForkServer, assert_resumed_from, count_lines, newest_valid_checkpoint, shared_server, wait_until
from tests.test_mds import RUN, SHARD_SIZE, _cli, _train

require("streaming")

s3 = test_mds.s3  # the moto S3 server fixture, serving this module's shards (its `digits` is the one below)
BLOCK = 2  # shards per block: digits' ~21 training shards of 16 kB make ~11 blocks


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits written as small shards (the `s3` fixture uploads them)."""
    root = tmp_path_factory.mktemp("mds_evict")
    cfg = write_config(root / "source.yaml", tiny_config(train=RUN))
    rc, out = _cli(root, "prepare", "prepare", str(cfg), "--to-mds", str(root / "shards"), "--shard-size", SHARD_SIZE)
    assert rc == 0, out
    return {"root": root, "shards": root / "shards"}


def _config(**data: Any) -> dict[str, Any]:
    return tiny_config(train=RUN | {"batch_size": 128, "log_every_n_steps": 1}, data={"source": "mds", "shuffle_block": BLOCK, **data})


def _minimum(shards: Path, remote: str) -> int:
    """The smallest data.cache_limit for a cache of these shards (which also holds the `.remote` mark)."""
    from taktstock.data.mds.dataset import cache_minimum

    return cache_minimum(shards, BLOCK) + len(remote) + 1


def test_shard_blocked_order_covers_every_sample_block_by_block_and_ranks_agree(digits: dict[str, Path]) -> None:
    from taktstock.config import load_config
    from taktstock.data.loaders import EpochBatchSampler, build_train_batches
    from taktstock.data.mds.order import shard_blocks
    from taktstock.data.prepare import prepare

    split = prepare(load_config(write_config(digits["root"] / "order.yaml", _config(path=str(digits["shards"]))))).split("train")
    ends = split.shards.ends
    shard_of = np.searchsorted(ends, np.arange(len(split)), side="right")
    assert len(ends) >= 8 * BLOCK
    config = load_config(write_config(digits["root"] / "order_w.yaml", _config(path=str(digits["shards"]), num_workers=1) | {"train": RUN}))
    sampler = build_train_batches(split, config, torch.device("cpu")).sampler
    for epoch in (0, 1):
        order = np.concatenate(sampler.global_batches(epoch))
        assert np.array_equal(np.sort(order), np.arange(len(split)))  # every sample exactly once
        # Position by position the order walks the blocks in turn, touching only the block's shards.
        start = 0
        for shards in shard_blocks(len(ends), config.seed, epoch, BLOCK):
            size = int(sum(ends[s] - (ends[s - 1] if s else 0) for s in shards))
            assert set(shard_of[order[start : start + size]]) == set(shards.tolist())
            start += size
        # So a batch touches the shards of one block, or of two consecutive ones at a block boundary.
        blocks = shard_blocks(len(ends), config.seed, epoch, BLOCK)
        block_of = np.empty(len(ends), np.int64)
        for i, shards in enumerate(blocks):
            block_of[shards] = i
        batches = sampler.global_batches(epoch)
        spans = [set(block_of[shard_of[b]].tolist()) for b in batches]
        assert all(max(s) - min(s) <= 1 for s in spans) and sum(len(s) == 1 for s in spans) > len(batches) // 3
        # Resume at batch 7: the same keys as the uninterrupted epoch from there.
        resumed = EpochBatchSampler(len(split), config.train.batch_size, config.seed, order=split.epoch_order)
        resumed.set_epoch(epoch, 7)
        sampler.set_epoch(epoch, 0)
        assert list(resumed) == list(sampler)[7:]
        # Two ranks: contiguous halves of each global batch, together the one-process batch.
        ranks = [
            EpochBatchSampler(len(split), config.train.batch_size, config.seed, rank=r, world_size=2, order=split.epoch_order)
            for r in (0, 1)
        ]
        for one, a, b in zip(batches, ranks[0].local_batches(epoch), ranks[1].local_batches(epoch), strict=True):
            assert np.array_equal(np.concatenate([a, b]), one)
    assert not np.array_equal(np.concatenate(sampler.global_batches(0)), np.concatenate(sampler.global_batches(1)))
    # Without data.shuffle_block the split keeps the sampler's global permutation (runs from shards == from the source).
    plain = prepare(
        load_config(write_config(digits["root"] / "plain.yaml", tiny_config(data={"source": "mds", "path": str(digits["shards"])})))
    )
    assert plain.split("train").epoch_order(0, 0) is None


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cache_limit_evicts_within_the_limit_and_trains_bit_identically(digits: dict[str, Path], s3: dict[str, Any]) -> None:
    root = digits["root"]
    unlimited = _train(root, "unlimited", _config(path=str(root / "cache_unlimited"), remote=s3["remote"]), s3["env"], fresh=True)
    limit = _minimum(digits["shards"], s3["remote"])
    log = root / "limited.cache.jsonl"
    cache = root / "cache_limited"
    limited = _train(root, "limited", _config(path=str(cache), remote=s3["remote"], cache_limit=limit), s3["env"] | {LOG_ENV: str(log)})
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
        assert (limited / name).read_bytes() == (unlimited / name).read_bytes(), name
    events = _log(log)
    evicted = [e for e in events if e["event"] == "evict"]
    assert len(evicted) > 10, events  # the cache really turned over (2 epochs of ~11 blocks in ~2 blocks of room)
    assert max(e["bytes"] for e in events) <= limit, events
    assert cache_bytes(cache) <= limit
    assert cache_bytes(root / "cache_unlimited") > limit  # the data set does not fit the limit
    assert not list(cache.glob("*/.*.tmp"))


def test_cache_limit_sigkill_and_resume_with_workers_is_bit_identical(digits: dict[str, Path], s3: dict[str, Any]) -> None:
    root = digits["root"]
    reference = root / "unlimited"
    if not (reference / "model.safetensors").is_file():
        reference = _train(root, "unlimited", _config(path=str(root / "cache_unlimited"), remote=s3["remote"]), s3["env"], fresh=True)
    limit = _minimum(digits["shards"], s3["remote"]) + 2 * 16_000  # two workers may straddle a block boundary: one shard of room each
    log, cache, run = root / "killed.cache.jsonl", root / "cache_killed", root / "killed"
    env = s3["env"] | {LOG_ENV: str(log)}
    config = _config(path=str(cache), remote=s3["remote"], cache_limit=limit, num_workers=2) | {"checkpoint": {"every_n_steps": 3}}
    cfg = write_config(root / "killed.yaml", config)
    child = shared_server().start(["train", str(cfg), "--run-dir", str(run)], root, root / "killed-1.log", env)
    assert wait_until(lambda: count_lines(run / "metrics.jsonl") >= 14, child, 300), child.output()  # mid-epoch 1 (10 steps each)
    child.kill_group()
    assert child.wait(60) == -signal.SIGKILL, child.output()
    at_kill = newest_valid_checkpoint(run)
    assert at_kill is not None and at_kill.step >= 9, at_kill  # checkpoints every 3 steps, killed after step 14
    rc = shared_server().run(["train", "--resume", str(run)], root, root / "killed-2.log", env, timeout=300)
    assert rc == 0, (root / "killed-2.log").read_text()
    assert_resumed_from((root / "killed-2.log").read_text(), at_kill)
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    events = _log(log)
    assert any(e["event"] == "evict" for e in events) and max(e["bytes"] for e in events) <= limit, events
    assert cache_bytes(cache) <= limit


@pytest.mark.slow  # a second fork server to run two trainings at once: ~20 s
def test_two_concurrent_limited_runs_share_one_cache(digits: dict[str, Path], s3: dict[str, Any]) -> None:
    """Two runs on one limited cache, each evicting: the cache never exceeds the limit, neither removes a shard
    the other reads, and both train exactly as the unlimited run (same shuffle_block)."""
    root = digits["root"]
    reference = root / "unlimited"
    if not (reference / "model.safetensors").is_file():
        reference = _train(root, "unlimited", _config(path=str(root / "cache_unlimited"), remote=s3["remote"]), s3["env"], fresh=True)
    limit = 2 * _minimum(digits["shards"], s3["remote"])  # each run holds its own two blocks
    assert cache_bytes(root / "cache_unlimited") > limit  # the data set does not fit the limit (each run has half of it)
    log, cache = root / "concurrent.cache.jsonl", root / "cache_concurrent"
    second = ForkServer()  # the shared server runs one command at a time
    try:
        children = []
        for server, name in ((shared_server(), "limited_a"), (second, "limited_b")):
            cfg = write_config(root / f"{name}.yaml", _config(path=str(cache), remote=s3["remote"], cache_limit=limit))
            argv = ["train", str(cfg), "--run-dir", str(root / name)]
            children.append(server.start(argv, root, root / f"{name}.log", s3["env"] | {LOG_ENV: str(log)}))
        assert [c.wait(300) for c in children] == [0, 0], [c.output() for c in children]
    finally:
        second.close()
    for name in ("limited_a", "limited_b"):
        for file in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
            assert (root / name / file).read_bytes() == (reference / file).read_bytes(), (name, file)
    events = _log(log)
    assert sum(e["event"] == "evict" for e in events) > 10, events  # the cache really turned over
    assert max(e["bytes"] for e in events) <= limit, events
    assert cache_bytes(cache) <= limit and not list(cache.glob("*/.*.tmp"))


def test_cache_limit_below_two_blocks_or_without_a_block_is_exit_2(digits: dict[str, Path], s3: dict[str, Any]) -> None:
    root = digits["root"]
    minimum = _minimum(digits["shards"], s3["remote"])
    cases = {
        "small": _config(path=str(root / "cache_small"), remote=s3["remote"], cache_limit=minimum - 1),
        "noblock": tiny_config(data={"source": "mds", "path": str(root / "cache_small"), "remote": s3["remote"], "cache_limit": "1gb"}),
    }
    for name, config in cases.items():
        rc, out = _cli(root, f"bad-{name}", "train", str(write_config(root / f"bad-{name}.yaml", config)), env=s3["env"])
        assert rc == 2 and "data.cache_limit" in out and "Traceback" not in out, out
    assert str(minimum) in (root / "bad-small.log").read_text()
    assert "data.shuffle_block" in (root / "bad-noblock.log").read_text()


def test_eviction_is_lru_skips_held_and_window_shards_and_removes_dead_downloads(tmp_path: Path) -> None:
    """LimitedCache directly: two instances stand for two processes (flock conflicts between open files)."""
    import os
    import subprocess
    import sys

    from taktstock.data.mds.cache import LimitedCache

    split = tmp_path / "train"
    split.mkdir()
    shards = [split / f"shard.{i:05d}.mds" for i in range(5)]
    for i, path in enumerate(shards):
        path.write_bytes(b"x" * 100)
        os.utime(path, ns=(i * 10**9, i * 10**9))  # shard 0 least recently used
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (split / f".shard.00009.mds.{dead.stdout.strip()}.tmp").write_bytes(b"y" * 50)  # a killed download's leftover
    (split / f".shard.00008.mds.{os.getpid()}.tmp").write_bytes(b"z" * 10)  # a live one's, kept (and counted)
    reader, writer = LimitedCache(tmp_path, 10_000), LimitedCache(tmp_path, 410)
    reader.hold(shards[0])  # another process reads shard 0 (and marks it recently used)
    os.utime(shards[0], ns=(0, 0))
    new = split / "shard.00005.mds"
    writer.download(lambda: new.write_bytes(b"n" * 100), new, 100, protect=[shards[1]])
    # 500 + 10 live tmp + 100 new must fit in 410: shards 2 and 3 go (0 is held, 1 in the window), oldest first.
    assert sorted(p.name for p in split.glob("*.mds")) == ["shard.00000.mds", "shard.00001.mds", "shard.00004.mds", "shard.00005.mds"]
    assert [p.name for p in split.glob(".*.tmp")] == [f".shard.00008.mds.{os.getpid()}.tmp"]
    reader.release_except([])
    writer.download(lambda: None, new, 100, protect=[])  # present: nothing to do
    other = split / "shard.00006.mds"
    writer.download(lambda: other.write_bytes(b"o" * 100), other, 100, protect=[])
    assert not shards[0].exists()  # released: now it is the least recently used and evictable


def test_two_ranks_share_one_limited_cache_and_train_as_with_an_unlimited_one(digits: dict[str, Path], s3: dict[str, Any]) -> None:
    """`--nproc-per-node 2` on one limited cache: both ranks download and evict in the same folder, each reading its
    own slice of every block; the limit holds throughout and the run is the unlimited two-process run bit for bit.
    Both runs really had two ranks (world size 2 in the checkpoint) that read disjoint halves of every epoch."""
    root = digits["root"]
    limit = 2 * _minimum(digits["shards"], s3["remote"])  # each rank holds its own window of two blocks
    log, cache, unlimited = root / "ddp.cache.jsonl", root / "cache_ddp", root / "cache_ddp_unlimited"
    helpers = rank_keys.install(root / "ddp_helpers", "taktstock.data.mds.dataset:ShardSplit")
    for name, data, env in (
        ("ddp_unlimited", {"path": str(unlimited)}, s3["env"]),
        ("ddp_limited", {"path": str(cache), "cache_limit": limit}, s3["env"] | {LOG_ENV: str(log)}),
    ):
        config = _config(remote=s3["remote"], **data)
        config["train"]["callbacks"] = [rank_keys.CALLBACK]
        (root / f"{name}_keys").mkdir()
        env = env | {"DUMP_DIR": str(root / f"{name}_keys"), "PYTHONPATH": env["PYTHONPATH"] + os.pathsep + str(helpers)}
        cfg = write_config(root / f"{name}.yaml", config)
        rc, out = test_mds._cli(root, name, "train", str(cfg), "--run-dir", str(root / name), "--nproc-per-node", "2", env=env)
        assert rc == 0, out
    n_train = json.loads((digits["shards"] / "taktstock.json").read_text())["sizes"]["train"]
    for name in ("ddp_unlimited", "ddp_limited"):
        assert rank_keys.checkpoint_world_size(root / name) == 2, name
        rank_keys.assert_ranks_split(root / f"{name}_keys", 2, {(epoch, i) for epoch in range(RUN["epochs"]) for i in range(n_train)})
    for file in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
        assert (root / "ddp_limited" / file).read_bytes() == (root / "ddp_unlimited" / file).read_bytes(), file
    events = _log(log)
    assert sum(e["event"] == "evict" for e in events) > 10, events  # the cache really turned over
    assert max(e["bytes"] for e in events) <= limit, events
    assert cache_bytes(cache) <= limit < cache_bytes(unlimited) and not list(cache.glob("*/.*.tmp"))
