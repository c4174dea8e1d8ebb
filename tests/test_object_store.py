"""Run directories in object storage (`--run-dir s3://...`) against a moto S3 server on 127.0.0.1.

Each "machine" is its own TAKTSTOCK_RUN_CACHE (the local mirror's home): a relaunch with an empty one is a
fresh machine that has only what the bucket holds.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import cli_env, require, tiny_config, write_config
from tests.moto_server import moto_s3
from tests.resume_harness import shared_server, wait_until

require("moto")
require("s3fs")

BUCKET = "runs"
# 20 steps per epoch; checkpoints every 3 steps, the 2 newest kept (locally and remotely).
CONFIG = tiny_config(train={"epochs": 2, "batch_size": 64, "log_every_n_steps": 1}, checkpoint={"every_n_steps": 3, "keep_last": 2})


def _cli(root: Path, log: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    rc = shared_server().run(list(args), root, root / f"{log}.log", env, timeout=timeout)
    return rc, (root / f"{log}.log").read_text()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("objstore")
    with moto_s3(root / "moto.log") as server:
        server["client"].create_bucket(Bucket=BUCKET)
        cfg = write_config(root / "config.yaml", CONFIG)
        rc, out = _cli(root, "reference", "train", str(cfg), "--run-dir", str(root / "reference"))  # uninterrupted, local
        assert rc == 0, out
        rc, out = _cli(root, "evaluate-local", "evaluate", str(root / "reference"))
        assert rc == 0, out
        yield server | {"root": root, "config": cfg, "reference": root / "reference", "log": root / "moto.log"}


def _env(s3: dict[str, Any], machine: str, **extra: str) -> dict[str, str]:
    return cli_env(**s3["env"], TAKTSTOCK_RUN_CACHE=str(s3["root"] / machine), **extra)


def _objects(s3: dict[str, Any], prefix: str) -> dict[str, bytes]:
    client = s3["client"]
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"].removeprefix(prefix + "/"): client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def _puts(log: Path) -> list[str]:
    """Object uploads in the moto server's log, in order (not the write probe, which is deleted again)."""
    return [m.group(1) for m in re.finditer(r'"PUT /runs/(\S+) HTTP', log.read_text()) if ".taktstock-write-probe-" not in m.group(1)]


def _steps(objects: dict[str, bytes], suffix: str) -> set[int]:
    return {int(m.group(1)) for k in objects if (m := re.fullmatch(rf"checkpoints/step-(\d+)\.{suffix}", k))}


def test_sigkill_during_an_upload_then_a_fresh_machine_continues_from_the_newest_complete_checkpoint(s3: dict[str, Any]) -> None:
    root, prefix = s3["root"], "exp/killed"
    url = f"s3://{BUCKET}/{prefix}"
    # The upload of step 12 stops after its data, before its manifest: the kill leaves a half-uploaded checkpoint.
    child = shared_server().start(
        ["train", str(s3["config"]), "--run-dir", url], root, root / "killed-1.log", _env(s3, "machine1", TAKTSTOCK_TEST_BLOCK_UPLOAD="12")
    )
    assert wait_until(lambda: "test: upload of step-00000012 blocked" in child.output(), child, 300), child.output()
    child.kill_group()
    assert child.wait(60) == -signal.SIGKILL, child.output()
    remote = _objects(s3, prefix)
    assert _steps(remote, "json") == {6, 9}, sorted(remote)  # complete ones, pruned to keep_last=2 (step 3 deleted remotely)
    assert _steps(remote, "pt") == {6, 9, 12}  # step 12: data without its manifest

    # The same command again, on a fresh machine (as a rescheduled pod or a requeued job on another node).
    assert not (root / "machine2").exists()
    rc, out = _cli(root, "killed-2", "train", str(s3["config"]), "--run-dir", url, env=_env(s3, "machine2"))
    assert rc == 0, out
    assert re.search(r"resuming \S+ from step-00000009\.pt \(step 9, epoch 0\)", out), out
    (mirror,) = [p for p in (root / "machine2").iterdir() if p.is_dir()]
    remote = _objects(s3, prefix)
    reference = s3["reference"]
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
        expected = (reference / name).read_bytes()
        assert (mirror / name).read_bytes() == expected, name
        assert remote[name] == expected, f"remote {name}"
    # The remote keeps the checkpoints the uninterrupted run keeps locally, each matching its manifest; no orphan data.
    kept = {p.name for p in (reference / "checkpoints").glob("step-*")}
    assert {k.removeprefix("checkpoints/") for k in remote if k.startswith("checkpoints/step-")} == kept
    for name in ("step-00000039", "step-00000040", "best"):
        manifest = json.loads(remote[f"checkpoints/{name}.json"])
        assert hashlib.sha256(remote[f"checkpoints/{name}.pt"]).hexdigest() == manifest["sha256"], name
    assert json.loads(remote["run.json"])["status"] == "completed"

    # Once more on another fresh machine: the run is complete, nothing is trained and nothing uploaded.
    puts = _puts(s3["log"])
    rc, out = _cli(root, "killed-3", "train", str(s3["config"]), "--run-dir", url, env=_env(s3, "machine4"))
    assert rc == 0 and "holds a completed run (step 40)" in out, out
    assert _puts(s3["log"])[len(puts) :] == [], "a finished run's relaunch uploaded files"
    assert _objects(s3, prefix) == remote

    # evaluate and predict on a third machine, from the URL; evaluate's results are uploaded next to the run.
    env = _env(s3, "machine3")
    rc, out = _cli(root, "evaluate-url", "evaluate", url, env=env)
    assert rc == 0, out
    expected = json.loads((reference / "eval" / "metrics.json").read_text())
    assert json.loads(_objects(s3, prefix)["eval/metrics.json"]) == expected
    np.savez(root / "rows.npz", x=np.random.default_rng(0).uniform(0, 16, (5, 64)).astype(np.float32))
    rc, from_url = _cli(root, "predict-url", "predict", url, str(root / "rows.npz"), "--out", str(root / "url.csv"), env=env)
    assert rc == 0, from_url
    rc, out = _cli(root, "predict-local", "predict", str(reference), str(root / "rows.npz"), "--out", str(root / "local.csv"))
    assert rc == 0, out
    assert (root / "url.csv").read_text() == (root / "local.csv").read_text()

    # --overwrite replaces the run in the bucket too: none of the old run's checkpoints is left to resume.
    rc, out = _cli(
        root, "overwrite", "train", str(s3["config"]), "train.epochs=1", "--run-dir", url, "--overwrite", env=_env(s3, "machine4")
    )
    assert rc == 0 and f"deleted the earlier run at {url}" in out, out
    remote = _objects(s3, prefix)
    assert _steps(remote, "json") == _steps(remote, "pt") == {18, 20} and "eval/metrics.json" not in remote
    assert json.loads(remote["run.json"])["steps"] == 20


def test_a_missing_bucket_is_exit_2_naming_the_url_before_anything_is_written(s3: dict[str, Any]) -> None:
    root = s3["root"]
    rc, out = _cli(root, "missing", "train", str(s3["config"]), "--run-dir", "s3://no-such-bucket/exp/run", env=_env(s3, "m4"))
    assert rc == 2, out
    assert out.strip().splitlines() == [
        "error: --run-dir s3://no-such-bucket/exp/run: cannot write there (FileNotFoundError: The specified bucket does not exist)"
    ]
    assert not (root / "m4").exists()  # no local mirror, no run files
    # Credentials belong in the storage library's environment or config; one in a URL is refused, and never printed.
    rc, out = _cli(root, "secret", "train", str(s3["config"]), "--run-dir", "s3://key:hunter2@runs/exp/run", env=_env(s3, "m4"))
    assert rc == 2 and "hunter2" not in out and out.startswith("error: --run-dir s3://key@runs/exp/run: credentials in the URL"), out
    assert not (root / "m4").exists() and _objects(s3, "exp/run") == {}
    rc, out = _cli(root, "missing-eval", "evaluate", "s3://runs/exp/never-trained", env=_env(s3, "m4"))
    assert (rc, out.strip()) == (2, "error: s3://runs/exp/never-trained: not a run directory (no config.yaml there)")


def test_failed_uploads_are_reported_and_the_same_command_uploads_the_finished_run(s3: dict[str, Any]) -> None:
    """A bucket that stops taking writes after the start: training finishes, exit 1 names the URL and the local
    mirror; the same command again (uploads working) trains nothing and uploads the run, checkpoints included."""
    root, prefix = s3["root"], "exp/failing"
    url = f"s3://{BUCKET}/{prefix}"
    args = ["train", str(s3["config"]), "--run-dir", url]
    rc, out = _cli(root, "failing-1", *args, env=_env(s3, "machine5", TAKTSTOCK_TEST_FAIL_UPLOAD="1"))
    assert rc == 1, out
    assert out.count("warning: could not upload checkpoints/step-00000003.pt") == 1, out  # once per file, not per retry
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: uploading the run to {url} failed (") and "Access Denied (test fault)" in last, last
    assert last.endswith("holds it; launch the same command again to upload it"), last
    assert _objects(s3, prefix) == {}
    rc, out = _cli(root, "failing-2", *args, "--evaluate", env=_env(s3, "machine5"))
    assert rc == 0 and "holds a completed run (step 40)" in out, out
    remote = _objects(s3, prefix)
    assert remote["model.safetensors"] == (s3["reference"] / "model.safetensors").read_bytes()
    assert _steps(remote, "json") == _steps(remote, "pt") == {39, 40}
    assert json.loads(remote["eval/metrics.json"]) == json.loads((s3["reference"] / "eval" / "metrics.json").read_text())
