"""train.ema beyond one process and one command: every DDP rank keeps the same EMA (equal to the 1-process
one up to reduction order), and predict/export take `--weights ema|raw` as evaluate does.

One 1-process and one 2-process (gloo) run of the same experiment are shared by the module's tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from taktstock.errors import ConfigError
from tests.conftest import cli_env, run_cli, tiny_config, write_config
from tests.resume_harness import shared_server

DUMP_EMA = """
import os, torch

class DumpEma:
    # Test-only: every rank writes the EMA it holds at the end, so ranks can be compared with each other.
    def on_train_end(self, trainer):
        state = trainer.p.ema.module.state_dict()
        torch.save(state, os.path.join(os.environ["DUMP_DIR"], f"rank{os.environ.get('RANK', '0')}.pt"))
"""


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ema")
    (root / "dump_ema.py").write_text(DUMP_EMA)
    # No dropout: the 1- and 2-process runs must be the same computation; decay 0.9 moves the EMA visibly in 10 steps.
    config = tiny_config(
        model={"name": "mlp", "hidden": [32], "dropout": 0.0},
        train={
            "epochs": 1,
            "max_steps": 10,
            "batch_size": 64,
            "log_every_n_steps": 5,
            "ema": {"decay": 0.9},
            "callbacks": ["dump_ema:DumpEma"],
        },
    )
    path = write_config(root / "ema.yaml", config)
    out = {"root": root, "single": root / "single", "double": root / "double", "dump-double": root / "dump-double"}
    out["dump-double"].mkdir()
    # The 1-process run in a fork of the resume harness's pre-imported server (one interpreter start-up less);
    # the 2-process run through the real launcher (torchrun). Both import dump_ema from the working directory.
    log = root / "single.log"
    rc = shared_server().run(["train", str(path), "--run-dir", str(out["single"])], root, log, env={"DUMP_DIR": str(root)})
    assert rc == 0, log.read_text()[-3000:]
    env = cli_env(OMP_NUM_THREADS="1", DUMP_DIR=str(out["dump-double"]))
    env["PYTHONPATH"] += os.pathsep + str(root)
    run_cli("train", str(path), "--run-dir", str(out["double"]), "--nproc-per-node", "2", cwd=root, env=env, timeout=400, check=True)
    return out


def test_ddp_ranks_hold_the_same_ema_as_each_other_and_as_one_process(runs: dict[str, Path]) -> None:
    rank0, rank1 = (torch.load(runs["dump-double"] / f"rank{r}.pt") for r in (0, 1))
    assert "n_averaged" not in rank0 and rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # Rank 0 saved exactly that EMA, without DDP's "module." prefix.
    saved = load_file(str(runs["double"] / "ema.safetensors"))
    assert saved.keys() == rank0.keys() and all(torch.equal(saved[k], rank0[k]) for k in rank0)
    # Same global batch and seed: the 1-process EMA up to reduction order (as the raw weights in test_distributed).
    single = load_file(str(runs["single"] / "ema.safetensors"))
    assert _max_diff(single, saved) <= 1e-5
    assert _max_diff(load_file(str(runs["double"] / "model.safetensors")), saved) > 1e-3  # the EMA is not the raw weights


def test_predict_and_export_take_weights_ema_or_raw(runs: dict[str, Path]) -> None:
    from taktstock.checkpoint.inference import predict_rows
    from taktstock.deploy.export import export
    from taktstock.deploy.model import load_run
    from taktstock.deploy.predict import predict

    run, root = runs["single"], runs["root"]
    rows = np.random.default_rng(0).uniform(0, 16, (20, 64)).astype(np.float32)
    np.savez(root / "rows.npz", x=rows)
    inputs = [torch.from_numpy(rows)]
    # The CLI option once (a start-up costs seconds): ema on the last weights is ema.safetensors evaluated.
    cli = run_cli("predict", str(run), str(root / "rows.npz"), "--checkpoint", "last", "--weights", "ema", check=True).stdout
    ema_last = load_run(run, "last")
    ema_last.model.model.load_state_dict(load_file(str(run / "ema.safetensors")))
    header, expected = predict_rows(ema_last, inputs)
    assert predict(run, root / "rows.npz", "last", weights="ema") == (header, expected)
    assert cli.splitlines()[0] == ",".join(header) and len(cli.splitlines()) == 21
    raw_last = predict(run, root / "rows.npz", "last", weights="raw")
    assert raw_last == predict(run, root / "rows.npz", "last") != (header, expected)  # last defaults to model.safetensors
    assert predict(run, root / "rows.npz", weights="ema") == predict(run, root / "rows.npz")  # best is the EMA
    assert predict(run, root / "rows.npz", weights="raw") != predict(run, root / "rows.npz")

    path, diff = export(run, "safetensors", "last", root / "ema.safetensors", weights="ema")
    exported, ema = load_file(str(path)), load_file(str(run / "ema.safetensors"))
    assert diff == 0.0 and all(torch.equal(exported[f"model.{k}"], v) for k, v in ema.items())
    proc = run_cli("export", str(run), "--format", "safetensors", "--weights", "average")
    assert proc.returncode == 2 and "--weights: expected ema or raw" in proc.stderr and "Traceback" not in proc.stderr


def test_weights_ema_on_a_run_without_ema_is_the_evaluate_error(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    import yaml

    from taktstock.deploy.export import export
    from taktstock.deploy.predict import predict

    # The 1-process run as a run without train.ema would look (its config is what the loaders read).
    run = shutil.copytree(runs["single"], tmp_path / "plain")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["ema"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    np.savez(tmp_path / "rows.npz", x=np.zeros((2, 64), np.float32))
    with pytest.raises(ConfigError, match=r"--weights ema: .* was trained without train\.ema"):
        predict(run, tmp_path / "rows.npz", weights="ema")
    with pytest.raises(ConfigError, match=r"--weights ema: .* was trained without train\.ema"):
        export(run, "safetensors", weights="ema")
    assert predict(run, tmp_path / "rows.npz", weights="raw") == predict(run, tmp_path / "rows.npz")  # raw: its only weights
