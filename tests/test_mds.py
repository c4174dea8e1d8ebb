"""Streaming shards (data.source: mds): `prepare --to-mds`, then training from local or S3-compatible remote shards.

Equality, not closeness: shards hold the samples the source yields at evaluation, and taktstock's own
(seed, epoch) order reads them by random access, so a run from shards is the run from the source bit for bit.
The remote is a moto S3 server started here on 127.0.0.1 (stopped by PID); its request log counts downloads.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import cli_env, require, tiny_config, write_config
from tests.moto_server import moto_s3
from tests.resume_harness import (
    ForkServer,
    assert_resumed_from,
    count_lines,
    newest_valid_checkpoint,
    reference_server,
    shared_server,
    wait_until,
)

require("streaming")

BUCKET, PREFIX = "shards", "digits"
# Small shards: the digits splits span many of them, so random access really crosses shard boundaries.
SHARD_SIZE = "16kb"
RUN = {"epochs": 2, "batch_size": 64, "log_every_n_steps": 5}


def _cli(root: Path, log: str, *args: str, env: dict[str, str] | None = None, fresh: bool = False) -> tuple[int, str]:
    """`taktstock ARGS` in a fork of the pre-imported test server (a fresh interpreter per command costs seconds);
    `fresh`: in a new interpreter (the reference run of a SIGKILL test)."""
    rc = (reference_server() if fresh else shared_server()).run(list(args), root, root / f"{log}.log", env, timeout=300)
    return rc, (root / f"{log}.log").read_text()


def _train(root: Path, name: str, config: dict[str, Any], env: dict[str, str] | None = None, fresh: bool = False) -> Path:
    cfg = write_config(root / f"{name}.yaml", config)
    rc, out = _cli(root, name, "train", str(cfg), "--run-dir", str(root / name), env=env, fresh=fresh)
    assert rc == 0, out
    return root / name


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits written as shards, and the run trained from the original source (in-memory arrays)."""
    root = tmp_path_factory.mktemp("mds")
    cfg = write_config(root / "source.yaml", tiny_config(train=RUN))
    rc, out = _cli(root, "prepare", "prepare", str(cfg), "--to-mds", str(root / "shards"), "--shard-size", SHARD_SIZE)
    assert rc == 0, out
    return {"root": root, "shards": root / "shards", "source_run": _train(root, "source_run", tiny_config(train=RUN))}


def _mds_config(**data: Any) -> dict[str, Any]:
    return tiny_config(train=RUN, data={"source": "mds", **data})


def test_prepare_to_mds_writes_every_split_and_the_metadata(digits: dict[str, Path]) -> None:
    shards = digits["shards"]
    meta = json.loads((shards / "taktstock.json").read_text())
    assert meta["task"] == "classification" and meta["num_outputs"] == 10
    assert meta["sizes"] == {"train": 1257, "val": 270, "test": 270}
    index = json.loads((shards / "train" / "index.json").read_text())
    assert len(index["shards"]) > 3 and sum(s["samples"] for s in index["shards"]) == 1257
    assert meta["preprocessing"] == json.loads((digits["source_run"] / "preprocessing.json").read_text())


def test_training_from_local_shards_is_the_source_run_bit_for_bit(digits: dict[str, Path]) -> None:
    """In-memory arrays (source) vs two DataLoader workers reading shards: same batches, same weights and metrics."""
    root, source = digits["root"], digits["source_run"]
    run = _train(root, "local_run", _mds_config(path=str(digits["shards"]), num_workers=2))
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl", "preprocessing.json"):
        assert (run / name).read_bytes() == (source / name).read_bytes(), name
    for r in (run, source):
        assert _cli(root, f"evaluate-{r.name}", "evaluate", str(r))[0] == 0
    assert json.loads((run / "eval" / "metrics.json").read_text()) == json.loads((source / "eval" / "metrics.json").read_text())


def test_mds_path_without_an_index_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = write_config(tmp_path / "c.yaml", _mds_config(path=str(tmp_path / "empty")))
    rc, out = _cli(tmp_path, "train", "train", str(cfg))
    assert rc == 2, out
    assert "data.path" in out and "index.json" in out and "Traceback" not in out


# ------------------------------------------------------------------------------------------------ S3 remote


@pytest.fixture(scope="module")
def s3(digits: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """A moto S3 server on 127.0.0.1 holding the digits shards under s3://shards/digits/; its log lists requests."""
    require("moto")
    log = digits["root"] / "moto.log"
    with moto_s3(log) as server:
        client = server["client"]
        client.create_bucket(Bucket=BUCKET)
        for file in sorted(p for p in digits["shards"].rglob("*") if p.is_file()):
            client.upload_file(str(file), BUCKET, f"{PREFIX}/{file.relative_to(digits['shards']).as_posix()}")
        yield {"env": cli_env(**server["env"]), "log": log, "remote": f"s3://{BUCKET}/{PREFIX}"}


def _gets(log: Path) -> Counter[str]:
    """GET requests per object key in the moto server's log."""
    return Counter(m.group(1) for m in re.finditer(rf'"GET /{BUCKET}/{PREFIX}/(\S+) HTTP', log.read_text()))


def _cached(cache: Path) -> dict[str, tuple[int, int]]:
    """Shard files in a cache directory -> (inode, mtime_ns): a re-download replaces the file and changes both."""
    return {str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*.mds")}


def test_remote_shards_cold_cache_then_sigkill_and_resume_is_bit_identical_without_redownloads(
    digits: dict[str, Path], s3: dict[str, Any]
) -> None:
    root, env = digits["root"], s3["env"]
    n_train_shards = len(json.loads((digits["shards"] / "train" / "index.json").read_text())["shards"])

    # Cold cache: the run downloads what it reads, once, and trains exactly as from the source.
    cold = root / "cache_cold"
    reference_config = _mds_config(path=str(cold), remote=s3["remote"])
    reference_config["train"] = RUN | {"log_every_n_steps": 1}  # as in the killed run: metrics.jsonl compares line by line
    reference = _train(root, "remote_run", reference_config, env, fresh=True)  # the SIGKILL run below forks
    assert (reference / "model.safetensors").read_bytes() == (digits["source_run"] / "model.safetensors").read_bytes()
    gets = _gets(s3["log"])
    assert {k for k in gets if k.startswith("train/shard.")} == {f"train/shard.{i:05d}.mds" for i in range(n_train_shards)}
    assert max(gets.values()) == 1, gets

    # Two workers fetch shards concurrently into a second cold cache; SIGKILL mid-epoch, then resume.
    before = _gets(s3["log"])
    cache = root / "cache_killed"
    config = _mds_config(path=str(cache), remote=s3["remote"], num_workers=2) | {"checkpoint": {"every_n_steps": 3}}
    config["train"] = RUN | {"log_every_n_steps": 1}
    cfg, run = write_config(root / "killed.yaml", config), root / "killed"
    child = shared_server().start(["train", str(cfg), "--run-dir", str(run)], root, root / "killed-1.log", env)
    # Mid-epoch 0 (20 steps per epoch): after step 15's log line, past the checkpoints of steps 3 to 15.
    assert wait_until(lambda: count_lines(run / "metrics.jsonl") >= 15, child, 300), child.output()
    child.kill_group()
    assert child.wait(60) == -signal.SIGKILL, child.output()
    kept = _cached(cache)
    assert {k for k in kept if k.startswith("train/")} == {f"train/shard.{i:05d}.mds" for i in range(n_train_shards)}
    fetched = _gets(s3["log"]) - before
    assert max(fetched.values()) == 1, fetched  # the two workers never downloaded a shard twice

    at_kill = newest_valid_checkpoint(run)
    assert at_kill is not None and at_kill.step >= 12, at_kill  # checkpoints every 3 steps, killed after step 15
    rc = shared_server().run(["train", "--resume", str(run)], root, root / "killed-2.log", env, timeout=300)
    assert rc == 0, (root / "killed-2.log").read_text()
    assert_resumed_from((root / "killed-2.log").read_text(), at_kill)
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    after = _cached(cache)
    assert all(after[k] == v for k, v in kept.items()), "a cached shard was replaced"
    refetched = (_gets(s3["log"]) - before) - fetched
    assert not set(refetched) & set(kept), refetched


def test_two_concurrent_runs_share_one_cold_cache_and_download_each_shard_once(digits: dict[str, Path], s3: dict[str, Any]) -> None:
    """Two runs (two workers each) start together on the same empty cache: per-shard file locks, no shared memory."""
    root, cache = digits["root"], digits["root"] / "cache_shared"
    before = _gets(s3["log"])
    second = ForkServer()  # the shared server runs one command at a time
    try:
        children = []
        for server, name in ((shared_server(), "concurrent_a"), (second, "concurrent_b")):
            cfg = write_config(root / f"{name}.yaml", _mds_config(path=str(cache), remote=s3["remote"], num_workers=2))
            children.append(server.start(["train", str(cfg), "--run-dir", str(root / name)], root, root / f"{name}.log", s3["env"]))
        assert [c.wait(300) for c in children] == [0, 0], [c.output() for c in children]
    finally:
        second.close()
    for name in ("concurrent_a", "concurrent_b"):
        assert (root / name / "model.safetensors").read_bytes() == (digits["source_run"] / "model.safetensors").read_bytes()
    fetched = _gets(s3["log"]) - before
    shards = {k: n for k, n in fetched.items() if k.endswith(".mds")}  # (the small metadata files may be fetched by both)
    assert set(shards) == set(_cached(cache)) and set(shards.values()) == {1}, fetched


def test_shard_samples_keep_dtypes_and_data_augment_applies_on_read(digits: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards' samples are the source's tensors; data.augment (counter-based) augments them as it does the arrays."""
    from taktstock.config import load_config
    from taktstock.data.prepare import prepare

    monkeypatch.chdir(digits["root"])
    augment = {"augment": {"shift": 1, "hflip": True, "noise_std": 0.1}}
    source = prepare(load_config(write_config(digits["root"] / "aug_source.yaml", tiny_config(data={"source": "digits", **augment}))))
    shards = prepare(load_config(write_config(digits["root"] / "aug_mds.yaml", _mds_config(path=str(digits["shards"]), **augment))))
    x, y = shards.split("test")[3]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 8, 8) and y.dtype == torch.int64 and y.dim() == 0
    a, b = source.split("train"), shards.split("train")
    for key in [(0, 5), (1, 5), (3, 1000)]:
        (xa, ya), (xb, yb) = a[key], b[key]
        assert torch.equal(xa, xb) and torch.equal(ya, yb), key
    assert not torch.equal(b[(0, 5)][0], b[5][0])  # training keys are augmented, evaluation keys are not


def test_text_and_language_model_shards_yield_the_source_batches(workdir: Path) -> None:
    """Text classification (padded dict batches) and language-modelling windows round-trip through shards:
    the same collated batches, dtypes, spec, preprocessing and tokenizer; LM shards need data.task."""
    from taktstock.config import load_config
    from taktstock.data.mds.write import write_mds
    from taktstock.data.prepare import prepare
    from taktstock.errors import ConfigError
    from tests.test_text_train import lm_config, text_config
    from tests.text_helpers import labelled_sentences, python_sources, write_jsonl

    write_jsonl(workdir / "d.jsonl", labelled_sentences(60))
    python_sources(workdir / "corpus", 6)
    for name, config in (("text", text_config()), ("lm", lm_config())):
        source = prepare(load_config(write_config(workdir / f"{name}.yaml", config)))
        write_mds(source, workdir / f"{name}_shards", shard_size="8kb")
        # Batch shaping (pad_to_multiple_of) is the experiment's, for shards as for the source.
        data = {"source": "mds", "path": str(workdir / f"{name}_shards"), "pad_to_multiple_of": config["data"].get("pad_to_multiple_of")}
        if name == "lm":
            with pytest.raises(ConfigError, match=r"data\.task"):
                prepare(load_config(write_config(workdir / "lm_no_task.yaml", config | {"data": data})))
            data["task"] = "language_modeling"
        shards = prepare(load_config(write_config(workdir / f"{name}_mds.yaml", config | {"data": data})))
        assert shards.task == source.task and shards.spec() == source.spec() and shards.preprocessing() == source.preprocessing()
        assert shards.tokenizer_path.read_bytes() == source.tokenizer_path.read_bytes()
        for split in ("train", "val", "test"):
            a, b = source.split(split), shards.split(split)
            assert len(a) == len(b) > 0
            keys = list(range(0, len(a), max(1, len(a) // 12)))
            batch_a, batch_b = a.collate([a[i] for i in keys]), b.collate([b[i] for i in keys])
            assert batch_a.keys() == batch_b.keys()
            for k in batch_a:
                assert batch_a[k].dtype == batch_b[k].dtype and torch.equal(batch_a[k], batch_b[k]), (name, split, k)
