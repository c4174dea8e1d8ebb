"""An image folder end to end through the CLI: train with 0 and 2 workers (same weights), SIGKILL with
2 workers and random transforms then resume (bit-identical), evaluate (classes named by folder),
predict on files and folders, export (TorchScript, checked), and 1 vs 2 DDP processes.

One run (2 workers) is trained once per module and shared by the tests that only read it.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_env, run_cli, tiny_config, write_config
from rank_keys import CALLBACK, assert_ranks_split, checkpoint_world_size, install
from resume_harness import ForkServer, count_lines, kill_and_resume, reference_server, shared_server
from safetensors.torch import load_file

sys.path.insert(0, str(REPO / "scripts"))
from make_digit_images import write_digits

# Class folders named by words: the report and predictions must carry these names, not class ids,
# in torchvision's ImageFolder order (sorted folder names).
NAMES = sorted(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
N_TRAIN = 84  # 120 images, 15 % val and 15 % test held out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits") / "images"
    write_digits(root, size=16, per_class=12)
    for i, name in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]):
        (root / str(i)).rename(root / name)
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
    # No dropout, no batch norm: the DDP test compares 2 processes with this 1-process run, which must be
    # the same computation up to reduction order (batch norm sees per-rank batches).
    config["model"] = {"name": "cnn", "channels": [8, 16], "dropout": 0.0, "batch_norm": False}
    return config


def train(server: ForkServer, root: Path, config: dict, name: str) -> Path:
    cfg = write_config(root / f"{name}.yaml", config)
    rc = server.run(["train", str(cfg), "--run-dir", str(root / name)], root, root / f"{name}.log", timeout=300)
    assert rc == 0, (root / f"{name}.log").read_text()[-3000:]
    return root / name


def cli(root: Path, *args: str) -> str:
    """A taktstock command forked from the shared, pre-imported server (no interpreter start-up); its output."""
    log = root / f"{args[0]}.log"
    rc = shared_server().run(list(args), root, log, timeout=300)
    assert rc == 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.fixture(scope="module")
def trained(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run: one process, 2 DataLoader workers, random train transforms; in a fresh interpreter (the
    SIGKILL test's runs fork from the pre-imported server)."""
    return train(reference_server(), tmp_path_factory.mktemp("runs"), image_config(folder, 2), "two")


def test_image_folder_trains_identically_with_0_and_2_workers_and_resumes_after_sigkill(
    folder: Path, trained: Path, tmp_path: Path
) -> None:
    server = shared_server()
    zero = train(server, tmp_path, image_config(folder, 0), "zero")
    assert (zero / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()
    cfg = write_config(tmp_path / "kill.yaml", image_config(folder, 2))
    run = tmp_path / "killed"
    stats = kill_and_resume(
        server, tmp_path, cfg, run, kills=2, rng=random.Random(4), total_lines=count_lines(trained / "metrics.jsonl"), timeout=300
    )
    assert stats.kills == 2, stats.points
    assert any(stats.resumed_from), stats.resumed_from  # (each resume's step is checked by the harness)
    assert (run / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()
    assert (run / "metrics.jsonl").read_bytes() == (trained / "metrics.jsonl").read_bytes()


def test_evaluate_names_classes_by_folder(trained: Path) -> None:
    cli(trained.parent, "evaluate", str(trained))
    report = json.loads((trained / "eval" / "report.json").read_text())
    assert [k for k in report if k in NAMES] == NAMES
    assert sum(report[name]["support"] for name in NAMES) == 18  # the 15 % test split of 120 images


def test_predict_takes_an_image_file_or_a_folder(folder: Path, trained: Path) -> None:
    out = trained.parent / "four.csv"
    cli(trained.parent, "predict", str(trained), str(folder / "four"), "--out", str(out))
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0][:2] == ["file", "prediction"] and rows[0][2:] == [f"prob_{n}" for n in NAMES]
    assert len(rows) == 1 + 12 and all(r[1] in NAMES for r in rows[1:])
    from taktstock.deploy.predict import predict

    header, (row,) = predict(trained, rows[1][0])
    assert header == rows[0] and [str(v) for v in row] == rows[1]


def test_export_torchscript_of_an_image_run_matches_predict(folder: Path, trained: Path) -> None:
    from taktstock.data.images.inference import ImageInputs

    cli(trained.parent, "export", str(trained), "--format", "torchscript")
    module = torch.jit.load(str(trained / "export" / "model.pt"))
    files = sorted((folder / "seven").iterdir())[:4]
    prep = json.loads((trained / "preprocessing.json").read_text())
    with torch.no_grad():
        probs = module(ImageInputs(prep)(files))  # (N, C, H, W) images as the eval transforms leave them
    from taktstock.deploy.predict import predict

    _, rows = predict(trained, folder / "seven")
    expected = torch.tensor([[float(v) for v in r[2:]] for r in rows if Path(r[0]) in files])
    assert probs.shape == (4, 10) and torch.allclose(probs, expected, atol=1e-6)


def test_two_process_ddp_matches_one_process_and_each_rank_decodes_its_share(folder: Path, trained: Path, tmp_path: Path) -> None:
    # Every rank records the training keys it decoded (num_workers 0 keeps the decoding in the rank's process).
    helpers = install(tmp_path / "helpers", "taktstock.data.images.dataset:ImageSplitDataset")
    config = image_config(folder, 0)
    config["train"] = {**config["train"], "callbacks": [CALLBACK]}
    dump = tmp_path / "dump"
    dump.mkdir()
    env = cli_env(OMP_NUM_THREADS="1", DUMP_DIR=str(dump))
    env["PYTHONPATH"] += os.pathsep + str(helpers)
    cfg = write_config(tmp_path / "ddp.yaml", config)
    proc = run_cli("train", str(cfg), "--run-dir", str(tmp_path / "ddp"), "--nproc-per-node", "2", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = load_file(str(trained / "model.safetensors"))
    double = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert single.keys() == double.keys()
    assert max(float((single[k] - double[k]).abs().max()) for k in single) <= 1e-5
    assert checkpoint_world_size(tmp_path / "ddp") == 2
    # No image decoded by both ranks, and every image of every epoch by one.
    assert_ranks_split(dump, 2, {(epoch, i) for epoch in range(3) for i in range(N_TRAIN)})
