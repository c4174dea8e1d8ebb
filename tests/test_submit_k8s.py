"""`taktstock submit k8s`: the PyTorchJob manifest, checked with the kubeflow-training SDK's model classes, and
its pod command run here as a pod would run it (against a moto S3 server standing in for the bucket)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import cli_env, require, run_cli, tiny_config, write_config
from tests.moto_server import moto_s3

kubeflow = require("kubeflow.training")

URL = "s3://runs/exp/k8s"


def _manifest(root: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    out = root / "job.yaml"
    run_cli("submit", "k8s", str(root / "config.yaml"), *args, "--out", str(out), cwd=root, check=True)
    config_map, job = yaml.safe_load_all(out.read_text())
    return config_map, job


def _roundtrip(job: dict[str, Any]) -> dict[str, Any]:
    """The manifest read into the SDK's KubeflowOrgV1PyTorchJob (required fields enforced) and written back:
    a key the model classes do not know would be dropped, a wrongly typed value would fail or change."""
    from kubeflow.training.api_client import ApiClient

    client = ApiClient()
    model = client._ApiClient__deserialize(job, "KubeflowOrgV1PyTorchJob")
    assert isinstance(model, kubeflow.KubeflowOrgV1PyTorchJob)
    return client.sanitize_for_serialization(model)


def test_the_manifest_is_a_valid_pytorchjob_with_the_run_in_object_storage(tmp_path: Path) -> None:
    write_config(tmp_path / "config.yaml", tiny_config())
    args = ["--image", "registry.example/taktstock:1", "--nodes", "3", "--gpus-per-node", "8", "--run-dir", URL]
    args += ["--cpu", "32", "--memory", "256Gi", "--env", "NCCL_DEBUG=INFO", "--secret", "s3-credentials", "--namespace", "ml"]
    config_map, job = _manifest(tmp_path, "train.epochs=7", *args)
    assert _roundtrip(job) == job
    spec = job["spec"]
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"], job["metadata"]["namespace"]) == (
        "kubeflow.org/v1",
        "PyTorchJob",
        "taktstock-tiny",
        "ml",
    )
    assert spec["nprocPerNode"] == "8"
    replicas = spec["pytorchReplicaSpecs"]
    assert {k: (v["replicas"], v["restartPolicy"]) for k, v in replicas.items()} == {"Master": (1, "OnFailure"), "Worker": (2, "OnFailure")}
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/taktstock:1" and container["name"] == "pytorch"
        assert container["resources"]["limits"] == {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}
        assert container["env"] == [{"name": "NCCL_DEBUG", "value": "INFO"}]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        sh, flag, line = container["command"]
        assert (sh, flag) == ("sh", "-c")
        assert shlex.split(line) == [
            *("exec", "env", "-u", "WORLD_SIZE", "-u", "RANK"),
            *("taktstock", "train", "/etc/taktstock/config.yaml", "train.epochs=7", "--run-dir", URL),
            *(
                "--nproc-per-node",
                "8",
                "--nnodes",
                "3",
                "--node-rank",
                "$RANK",
                "--master-addr",
                "$MASTER_ADDR",
                "--master-port",
                "$MASTER_PORT",
            ),
        ]
        # The config file is the ConfigMap's, mounted where the command reads it.
        assert container["volumeMounts"] == [{"name": "taktstock-config", "mountPath": "/etc/taktstock", "readOnly": True}]
        assert pod["volumes"] == [{"name": "taktstock-config", "configMap": {"name": config_map["metadata"]["name"]}}]
    assert config_map["data"] == {"config.yaml": (tmp_path / "config.yaml").read_text()}


def test_a_local_run_dir_a_bad_option_and_apply_without_kubectl_are_exit_2(tmp_path: Path) -> None:
    write_config(tmp_path / "config.yaml", tiny_config())
    base = ["submit", "k8s", "config.yaml", "--image", "img"]
    local = run_cli(*base, "--run-dir", "/data/runs/x", cwd=tmp_path)
    assert local.returncode == 2 and local.stderr.startswith("error: --run-dir /data/runs/x: a pod's local disk is lost"), local.stderr
    bad_env = run_cli(*base, "--run-dir", URL, "--env", "NO_VALUE", cwd=tmp_path)
    assert (bad_env.returncode, bad_env.stderr.strip()) == (2, "error: --env: expected NAME=VALUE, got 'NO_VALUE'")
    no_kubectl = run_cli(*base, "--run-dir", URL, "--apply", cwd=tmp_path, env=cli_env(PATH=str(tmp_path / "empty")))
    assert no_kubectl.returncode == 2 and "kubectl is not on PATH" in no_kubectl.stderr, no_kubectl.stderr
    # With kubectl on PATH, --apply hands it the written file.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "kubectl.args"}\n')
    (bin_dir / "kubectl").chmod(0o755)
    applied = run_cli(*base, "--run-dir", URL, "--apply", "--out", "job.yaml", cwd=tmp_path, env=cli_env(PATH=f"{bin_dir}:/usr/bin:/bin"))
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "kubectl.args").read_text().split() == ["apply", "-f", "job.yaml"]


def test_the_pod_command_trains_into_the_bucket(tmp_path: Path) -> None:
    """A 1-pod CPU job's command, run as the pod would (config at the mount, the operator's WORLD_SIZE/RANK set)."""
    require("s3fs")
    write_config(tmp_path / "config.yaml", tiny_config(train={"epochs": 1, "batch_size": 128, "log_every_n_steps": 5}))
    config_map, job = _manifest(tmp_path, "--image", "img", "--run-dir", URL)
    mount = tmp_path / "etc-taktstock"
    mount.mkdir()
    for name, text in config_map["data"].items():
        (mount / name).write_text(text)
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    line = container["command"][2].replace("/etc/taktstock", str(mount))
    with moto_s3(tmp_path / "moto.log") as s3:
        s3["client"].create_bucket(Bucket="runs")
        env = cli_env(**s3["env"], TAKTSTOCK_RUN_CACHE=str(tmp_path / "pod"), WORLD_SIZE="2", RANK="1", OMP_NUM_THREADS="1")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the image's `taktstock`
        proc = subprocess.run(["sh", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        listed = s3["client"].list_objects_v2(Bucket="runs", Prefix="exp/k8s/")["Contents"]
        keys = {o["Key"].removeprefix("exp/k8s/") for o in listed}
    assert {"config.yaml", "run.json", "metrics.jsonl", "model.safetensors", "best.safetensors"} <= keys, keys
    mirror = next(p for p in (tmp_path / "pod").iterdir() if p.is_dir())
    assert (mirror / "model.safetensors").is_file()
