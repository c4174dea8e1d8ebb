"""A Kubeflow `PyTorchJob` (kubeflow.org/v1) for `taktstock submit k8s`, with its config in a ConfigMap.

One YAML file, two documents: a ConfigMap holding the experiment file as the user wrote it (mounted read-only
at /etc/taktstock/), and the PyTorchJob: a Master and N-1 Worker pods, each running one taktstock launcher
with `--nproc-per-node G` processes, rendezvous on the Master pod (the operator sets MASTER_ADDR, MASTER_PORT
and the pod's RANK). `restartPolicy: OnFailure` restarts a failed or evicted pod with the same command: the
run directory is an object-store URL, so the pod, on whatever node, continues the run from its newest
complete checkpoint (a relaunch continues a run; see docs/distributed.md).
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taktstock.errors import UserError

CONFIG_MOUNT = "/etc/taktstock"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The operator's WORLD_SIZE and RANK count pods; taktstock's launcher counts processes from its own options.
_POD_VARIABLES = ("WORLD_SIZE", "RANK")


@dataclass
class K8sOptions:
    image: str
    nodes: int = 1
    gpus_per_node: int = 0
    cpu: str | None = None
    memory: str | None = None
    env: list[str] = field(default_factory=list)  # K=V
    secrets: list[str] = field(default_factory=list)  # Secret names whose keys become environment variables
    namespace: str | None = None
    name: str = "taktstock"
    backoff_limit: int = 10
    grace: int = 120

    def validate(self) -> None:
        if self.nodes < 1:
            raise UserError(f"--nodes: expected at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise UserError(f"--gpus-per-node: expected 0 or more, got {self.gpus_per_node}")
        if len(self.name) > 50 or not _NAME.match(self.name):
            raise UserError(f"--name: '{self.name}' is not a Kubernetes name (lowercase letters, digits and '-', at most 50 characters)")
        for item in self.env:
            key, sep, _ = item.partition("=")
            if not sep or not _ENV.match(key):
                raise UserError(f"--env: expected NAME=VALUE, got '{item}'")

    @property
    def nproc(self) -> int:
        return max(1, self.gpus_per_node)


def default_name(experiment: str) -> str:
    """A Kubernetes name from the experiment name: `taktstock-<name>`, lowercase, '-' for anything else."""
    slug = re.sub(r"[^a-z0-9]+", "-", experiment.lower()).strip("-")[:40].strip("-")
    return f"taktstock-{slug}" if slug else "taktstock"


def command(config_name: str, overrides: list[str], run_dir: str, opts: K8sOptions) -> list[str]:
    """The container command: one launcher per pod, its node rank and rendezvous from the operator's variables."""
    train = ["taktstock", "train", f"{CONFIG_MOUNT}/{config_name}", *overrides, "--run-dir", run_dir]
    train += ["--nproc-per-node", str(opts.nproc), "--nnodes", str(opts.nodes)]
    line = " ".join(shlex.quote(a) for a in train)
    if opts.nodes > 1:
        line += ' --node-rank "$RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"'
    unset = " ".join(f"-u {v}" for v in _POD_VARIABLES)
    return ["sh", "-c", f"exec env {unset} {line}"]


def manifest(config_path: Path, overrides: list[str], run_dir: str, opts: K8sOptions) -> list[dict[str, Any]]:
    """[ConfigMap, PyTorchJob] as plain data (yaml.safe_dump_all writes the file)."""
    meta: dict[str, Any] = {"name": opts.name, "labels": {"app.kubernetes.io/managed-by": "taktstock"}}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta | {"name": f"{opts.name}-config"},
        "data": {config_path.name: config_path.read_text()},
    }
    resources: dict[str, Any] = {}
    for key, value in (("cpu", opts.cpu), ("memory", opts.memory)):
        if value:
            resources[key] = value
    limits = resources | ({"nvidia.com/gpu": str(opts.gpus_per_node)} if opts.gpus_per_node else {})  # quantities are strings
    container: dict[str, Any] = {
        "name": "pytorch",  # the training operator finds the training container by this name
        "image": opts.image,
        "command": command(config_path.name, overrides, run_dir, opts),
        "env": [{"name": k, "value": v} for k, _, v in (item.partition("=") for item in opts.env)],
        "resources": {"limits": limits, "requests": resources} if resources else {"limits": limits},
        "volumeMounts": [{"name": "taktstock-config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
    }
    if opts.secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in opts.secrets]
    pod = {
        "spec": {
            "containers": [container],
            "volumes": [{"name": "taktstock-config", "configMap": {"name": f"{opts.name}-config"}}],
            # SIGTERM (eviction, preemption): the run checkpoints and waits for its uploads within this time.
            "terminationGracePeriodSeconds": opts.grace,
        }
    }
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if opts.nodes > 1:
        replicas["Worker"] = {"replicas": opts.nodes - 1, "restartPolicy": "OnFailure", "template": copy.deepcopy(pod)}
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": meta,
        "spec": {
            "nprocPerNode": str(opts.nproc),
            "runPolicy": {"backoffLimit": opts.backoff_limit, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": replicas,
        },
    }
    return [config_map, job]


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """Multi-document YAML; multi-line strings (the embedded config) as literal blocks, readable in the file."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(documents, Dumper=Dumper, sort_keys=False)
