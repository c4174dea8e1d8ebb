"""Training on an image folder end to end (needs the dataset seam, `taktstock.data.dataset`): the same
weights with 0 and 2 workers, a SIGKILLed run with 2 workers and random transforms resumes bit-identical,
and predict takes the image files."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli, tiny_config, write_config
from resume_harness import ForkServer, count_lines, kill_and_resume, shared_server


sys.path.insert(0, str(REPO / "scripts"))
from make_digit_images import write_digits


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits") / "images"
    write_digits(root, size=16, per_class=12)
    return root


def image_config(folder: Path, workers: int) -> dict:
    config = tiny_config(
        experiment={"name": "images"},
        seed=5,
        data={
            "source": "imagefolder",
            "path": str(folder),
            "channels": 1,
            "num_workers": workers,
            "transforms": {
                "train": [{"RandomCrop": {"size": 16, "padding": 2}}, "RandomHorizontalFlip", {"RandomRotation": {"degrees": 10}}]
            },
        },
        train={"epochs": 3, "batch_size": 16, "log_every_n_steps": 1},
        checkpoint={"every_n_steps": 2},
        logging={"tensorboard": False, "plots": False, "progress": "off"},
    )
    config["model"] = {"name": "cnn", "channels": [8, 16], "dropout": 0.1}  # replaces tiny_config's MLP arguments
    return config


def train(server: ForkServer, root: Path, config: dict, name: str) -> Path:
    cfg = write_config(root / f"{name}.yaml", config)
    rc = server.run(["train", str(cfg), "--run-dir", str(root / name)], root, root / f"{name}.log", timeout=300)
    assert rc == 0, (root / f"{name}.log").read_text()[-3000:]
    return root / name


def test_image_folder_trains_identically_with_0_and_2_workers_and_resumes_after_sigkill(folder: Path, tmp_path: Path) -> None:
    server = shared_server()
    ref = train(server, tmp_path, image_config(folder, 2), "two")
    zero = train(server, tmp_path, image_config(folder, 0), "zero")
    assert (zero / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    cfg = write_config(tmp_path / "kill.yaml", image_config(folder, 2))
    run = tmp_path / "killed"
    stats = kill_and_resume(
        server, tmp_path, cfg, run, kills=2, rng=random.Random(4), total_lines=count_lines(ref / "metrics.jsonl"), timeout=300
    )
    assert stats.kills == 2, stats.points
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (run / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()
    # predict on the image files of one class: one row per file, class names from the folder names
    proc = run_cli("predict", str(ref), str(folder / "4"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("file,prediction,prob_0") and len(lines) == 1 + 12
