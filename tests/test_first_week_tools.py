"""The first-week tools: find-lr, find-batch-size, the profiler window, debug runs (--fast-dev-run,
train.overfit_batches, train.limit_val_batches) and model.activation_checkpointing, on tiny digits runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import cli_env, run_cli, tiny_config, write_config
from safetensors.torch import load_file
from torch import nn

from taktstock.config.loader import load_config, validate
from taktstock.config.schema import Config
from taktstock.data.loaders import build_train_batches
from taktstock.data.prepare import prepare
from taktstock.errors import ConfigError
from taktstock.models.activation_checkpointing import apply_activation_checkpointing
from taktstock.training import components, trainer
from taktstock.training.batch_size_finder import SavedBytes, find_batch_size
from taktstock.training.distributed import DistEnv
from taktstock.training.lr_finder import SKIP_BEGIN, lr_schedule, steepest_descent
from taktstock.training.probe import Probe
from taktstock.training.rng import seed_everything
from taktstock.training.run import train

pytestmark = pytest.mark.usefixtures("one_thread")


def make_config(**sections: Any) -> Config:
    return validate(tiny_config(**sections), {}, "test")


def files_under(root: Path) -> set[str]:
    """Every file below `root` except the prepared-data cache and the config files the test wrote."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "prepared" not in p.parts and p.suffix != ".yaml"}


# -- find-lr -----------------------------------------------------------------------------------------


def test_steepest_descent_is_the_most_negative_slope_of_the_smoothed_loss() -> None:
    lrs = list(lr_schedule(1e-6, 1.0, 40))
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    # Flat, then falling fastest between points 24 and 25, then flat again.
    loss = [2.0] * 20 + [1.9, 1.7, 1.4, 1.0, 0.5, 0.3, 0.25] + [0.25] * 13
    assert steepest_descent(lrs, loss) == lrs[23]
    assert steepest_descent(lrs[: SKIP_BEGIN + 2], loss[: SKIP_BEGIN + 2]) is None  # too few points after the skip


def test_find_lr_cli_plots_suggests_and_applies_without_writing_a_run(workdir: Path) -> None:
    cfg = write_config(workdir / "config.yaml", tiny_config(model={"name": "mlp", "hidden": [32], "dropout": 0.0}))
    proc = run_cli("find-lr", str(cfg), "--steps", "40", "--out", "lr.png", "--apply", "tuned.yaml", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"suggested optim.lr: (\S+) \(steepest descent", proc.stdout)
    assert found, proc.stdout
    suggestion = float(found.group(1))
    # The test ran up to divergence (the lr grows to 10 over 40 steps), not all 40 steps.
    steps = int(re.search(r"lr range test: (\d+) steps", proc.stderr).group(1))  # type: ignore[union-attr]
    assert "(diverged)" in proc.stderr and 15 < steps < 40
    assert 1e-7 < suggestion < 10
    from PIL import Image

    with Image.open(workdir / "lr.png") as image:
        assert image.size == (700, 450)
    applied = load_config(workdir / "tuned.yaml")
    assert applied.optim.lr == suggestion
    assert applied.model_dump(exclude={"optim"}) == load_config(cfg).model_dump(exclude={"optim"})
    assert files_under(workdir) == {"lr.png"}  # no run directory, checkpoint or log


def test_find_lr_keeps_the_ratio_of_parameter_groups(workdir: Path) -> None:
    from taktstock.commands.find_cmd import _with_lr

    config = make_config(optim={"name": "adamw", "lr": 0.001, "param_groups": [{"params": "net.3.*", "lr": 0.01}]})
    tuned = _with_lr(config, 0.02)
    assert tuned.optim.lr == 0.02 and tuned.optim.param_groups[0].lr == pytest.approx(0.2)


def test_find_lr_on_two_processes_reports_once(workdir: Path) -> None:
    cfg = write_config(workdir / "config.yaml", tiny_config(model={"name": "mlp", "hidden": [32], "dropout": 0.0}, train={"device": "cpu"}))
    proc = run_cli("find-lr", str(cfg), "--steps", "30", "--nproc-per-node", "2", "--out", "lr.png", cwd=workdir, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("suggested optim.lr:") == 1
    assert (workdir / "lr.png").is_file()


# -- find-batch-size ---------------------------------------------------------------------------------

OOM_MODEL = '''
import torch
from torch import nn


class Picky(nn.Module):
    """A model that runs out of memory above LIMIT samples per batch, like a GPU would."""

    LIMIT = 16

    def __init__(self, input_shape, num_outputs):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_outputs))

    def forward(self, x):
        if x.shape[0] > self.LIMIT:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {x.shape[0]} samples")
        return self.body(x)
'''


def test_find_batch_size_stops_at_out_of_memory_and_keeps_the_global_batch(workdir: Path) -> None:
    (workdir / "picky.py").write_text(OOM_MODEL)
    raw = tiny_config(train={"epochs": 1, "batch_size": 32, "accumulate_grad_batches": 3}) | {"model": {"name": "picky:Picky"}}
    cfg = write_config(workdir / "config.yaml", raw)
    proc = run_cli("find-batch-size", str(cfg), "--apply", "micro.yaml", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    # Global batch 96: divisors 1, 2, 3, 4, 6, 8, 12, 16 fit, 24 raises out of memory and ends the search.
    rows = re.findall(r"│\s+(\d+) │\s+(\d+) │.*│\s+(yes|no: out of memory) │", proc.stdout)
    assert [(int(m), int(a), f) for m, a, f in rows] == [
        (1, 96, "yes"),
        (2, 48, "yes"),
        (3, 32, "yes"),
        (4, 24, "yes"),
        (6, 16, "yes"),
        (8, 12, "yes"),
        (12, 8, "yes"),
        (16, 6, "yes"),
        (24, 4, "no: out of memory"),
    ], proc.stdout
    assert "micro-batch 16 x 6 accumulation = global batch 96 (as configured)" in proc.stdout
    applied = yaml.safe_load((workdir / "micro.yaml").read_text())["train"]
    assert (applied["batch_size"], applied["accumulate_grad_batches"]) == (16, 6)
    # The written config trains: the same number of optimizer steps per epoch as the original one.
    result = train(load_config(workdir / "micro.yaml"), run_dir=workdir / "run")
    assert result.steps == -(-1257 // 96)
    assert files_under(workdir) - {"picky.py"} - {str(p.relative_to(workdir)) for p in (workdir / "run").rglob("*")} == set()


BACKWARD_OOM_MODEL = '''
import torch
from torch import nn


def _fail(grad):
    raise torch.OutOfMemoryError("CUDA out of memory in the backward pass")


class LateOom(nn.Module):
    """Runs out of memory half-way through the backward pass above 16 samples: the head already has its gradient."""

    def __init__(self, input_shape, num_outputs):
        super().__init__()
        self.body, self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 32)), nn.Linear(32, num_outputs)

    def forward(self, x):
        h = self.body(x)
        if x.shape[0] > 16 and h.requires_grad:
            h.register_hook(_fail)
        return self.head(h)
'''


def test_find_batch_size_frees_the_partial_gradients_of_a_failed_step(workdir: Path) -> None:
    (workdir / "late_oom.py").write_text(BACKWARD_OOM_MODEL)
    config = validate(tiny_config(train={"batch_size": 32}) | {"model": {"name": "late_oom:LateOom"}}, {}, "test")
    probe = Probe.build(config, DistEnv())
    _, tried = find_batch_size(probe)
    assert [(c.micro, c.fits, c.reason) for c in tried][-2:] == [(16, True, ""), (32, False, "out of memory")]
    assert all(p.grad is None for p in probe.model.parameters())  # the head's gradient of the failed step is gone


def test_find_lr_runs_under_autocast(workdir: Path) -> None:
    from taktstock.training.lr_finder import find_lr

    sections = {"model": {"name": "mlp", "hidden": [32], "dropout": 0.0}}
    full = find_lr(Probe.build(make_config(**sections), DistEnv()), steps=15, min_lr=1e-5, max_lr=1e-2)
    bf16 = find_lr(Probe.build(make_config(**sections, train={"precision": "bf16"}), DistEnv()), steps=15, min_lr=1e-5, max_lr=1e-2)
    assert len(full.losses) == len(bf16.losses) == 15 and bf16.stopped == "completed"
    assert bf16.losses != full.losses and bf16.losses == pytest.approx(full.losses, rel=0.02)  # bf16 rounding, same curve


def test_find_batch_size_respects_a_cpu_memory_budget(workdir: Path) -> None:
    config = make_config(model={"name": "mlp", "hidden": [256, 256], "dropout": 0.0}, train={"batch_size": 64})
    _, everything = find_batch_size(Probe.build(config, DistEnv()))
    assert [c.micro for c in everything] == [1, 2, 4, 8, 16, 32, 64] and all(c.fits for c in everything)
    estimate = {c.micro: c.memory_mb for c in everything}
    assert estimate[1] < estimate[16] < estimate[32] < estimate[64]  # saved activations grow with the batch
    budget = (estimate[16] + estimate[32]) / 2  # type: ignore[operator]
    _, tried = find_batch_size(Probe.build(config, DistEnv()), budget_mb=budget)
    assert [c.micro for c in tried if c.fits] == [1, 2, 4, 8, 16] and tried[-1].reason == "over --memory-budget"
    # Planning a run on 4 processes: per-process micro-batches whose 4x divides the global batch of 64.
    _, four = find_batch_size(Probe.build(config, DistEnv()), world_size=4, budget_mb=budget)
    assert [(c.micro, c.accumulate) for c in four if c.fits] == [(1, 16), (2, 8), (4, 4), (8, 2), (16, 1)]


def test_find_batch_size_rejects_a_budget_nothing_fits(workdir: Path) -> None:
    cfg = write_config(workdir / "config.yaml", tiny_config())
    proc = run_cli("find-batch-size", str(cfg), "--memory-budget", "0.001", cwd=workdir)
    assert proc.returncode == 2 and "error: find-batch-size: not even a micro-batch of 1 fits (over --memory-budget)" in proc.stderr
    uneven = run_cli("find-batch-size", str(cfg), "--world-size", "3", cwd=workdir)
    assert uneven.returncode == 2 and "the global batch 64 (train.batch_size 64 x accumulate_grad_batches 1) cannot" in uneven.stderr
    nowhere = run_cli("find-lr", str(cfg), "--apply", "missing/dir/lr.yaml", cwd=workdir)
    assert nowhere.returncode == 2 and "error: --apply missing/dir/lr.yaml: the directory" in nowhere.stderr


# -- profiler ----------------------------------------------------------------------------------------


def test_profile_window_writes_a_trace_of_exactly_its_steps(workdir: Path) -> None:
    raw = tiny_config(train={"epochs": 1, "batch_size": 64, "profile": {"start_step": 3, "steps": 2, "memory": True}})
    cfg = write_config(workdir / "config.yaml", raw)
    proc = run_cli("train", str(cfg), "--run-dir", "run", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    traces = list((workdir / "run" / "profile").glob("rank0.*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = [e.get("name", "") for e in events]
    assert sum(n.startswith("Optimizer.step#AdamW.step") for n in names) == 2  # steps 3 and 4, nothing else
    assert "aten::addmm" in names
    assert any(e.get("name") == "[memory]" for e in events)  # memory: true records allocations
    assert "profile of steps 3-4:" in proc.stdout and "aten::" in proc.stdout
    assert "Self CPU" in (workdir / "run" / "profile" / "top_ops.txt").read_text()
    late = run_cli("train", str(cfg), "--run-dir", "late", "train.profile.start_step=100", cwd=workdir)
    assert late.returncode == 0 and not (workdir / "late" / "profile").exists()
    assert "note: nothing profiled: the run ended at step 20, before train.profile.start_step 100" in late.stdout


def test_profile_is_off_by_default() -> None:
    from taktstock.training.profiling import profiler_callbacks

    config = make_config()
    assert config.train.profile is None
    assert profiler_callbacks(config.train.profile, Path("unused"), torch.device("cpu"), True) == []


# -- debug runs ----------------------------------------------------------------------------------------


def test_fast_dev_run_runs_n_batches_and_leaves_no_run_files(workdir: Path) -> None:
    tmp = workdir / "tmp"
    tmp.mkdir()
    cfg = write_config(workdir / "config.yaml", tiny_config(logging={"tensorboard": True, "plots": True}))
    proc = run_cli("train", str(cfg), "--fast-dev-run", "2", cwd=workdir, env=cli_env(TMPDIR=str(tmp)))
    assert proc.returncode == 0, proc.stderr
    assert "=== fast dev run: 2 training and 2 validation batch(es), one epoch" in proc.stderr
    assert re.search(r"│ steps\s+│\s+2 │", proc.stdout), proc.stdout  # two optimizer steps, one epoch
    assert files_under(workdir) == set()  # no experiments/, no checkpoints, no TensorBoard events, temp dir gone
    one = run_cli("train", "--fast-dev-run", str(cfg), cwd=workdir)  # N defaults to 1, the flag anywhere
    assert one.returncode == 0 and re.search(r"│ steps\s+│\s+1 │", one.stdout), one.stderr
    bad = run_cli("train", str(cfg), "--fast-dev-run", "0", cwd=workdir)
    assert bad.returncode == 2 and "--fast-dev-run must be at least 1" in bad.stderr


@pytest.fixture
def eval_batches_seen(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The batches of every validation pass of an in-process run."""
    seen: list[list[Any]] = []
    real = trainer.run_eval

    def counting(model: nn.Module, batches: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        batches = list(batches)
        seen.append(batches)
        return real(model, batches, *args, **kwargs)

    monkeypatch.setattr(trainer, "run_eval", counting)
    return seen


def test_limit_val_batches_validates_on_the_first_n_batches(workdir: Path, eval_batches_seen: list[list[Any]]) -> None:
    config = make_config(train={"epochs": 2, "batch_size": 64, "eval_batch_size": 20, "limit_val_batches": 3})
    train(config, run_dir=workdir / "run")
    assert [len(b) for b in eval_batches_seen] == [3, 3]
    val = prepare(config).split("val")
    assert torch.equal(torch.cat([x for x, _ in eval_batches_seen[0]]), torch.from_numpy(val.x[:60]))


def test_overfit_batches_drive_the_loss_to_zero_on_the_same_batches(workdir: Path, eval_batches_seen: list[list[Any]]) -> None:
    config = make_config(
        model={"name": "mlp", "hidden": [64], "dropout": 0.0},
        optim={"name": "adamw", "lr": 0.01},
        train={"epochs": 40, "batch_size": 32, "overfit_batches": 2, "log_every_n_steps": 1},
        metrics={"monitor": "val/loss", "mode": "min"},
    )
    result = train(config, run_dir=workdir / "run")
    assert result.steps == 80  # 2 batches per epoch
    first_two = list(build_train_batches(prepare(config).split("train"), config, torch.device("cpu")).epoch(0))[:2]
    for batches in (eval_batches_seen[0], eval_batches_seen[-1]):  # validation: the same two training batches
        assert len(batches) == 2 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, first_two))
    assert result.final_metrics["val/loss"] < 0.01 and result.final_metrics["val/acc"] == 1.0


def test_overfit_and_limit_train_batches_exclude_each_other(workdir: Path) -> None:
    cfg = write_config(workdir / "config.yaml", tiny_config(train={"overfit_batches": 2, "limit_train_batches": 3}))
    proc = run_cli("train", str(cfg), "--dry-run", cwd=workdir)
    assert proc.returncode == 2 and "overfit_batches" in proc.stderr and "Traceback" not in proc.stderr


# -- activation checkpointing ------------------------------------------------------------------------


def deep_mlp(config: Config) -> nn.Module:
    seed_everything(0, True)
    return components.build_model_for(config, prepare(config), torch.device("cpu"), DistEnv())[0]


def test_activation_checkpointing_gives_the_plain_gradients_with_fewer_saved_tensors(workdir: Path) -> None:
    sections = {"model": {"name": "mlp", "hidden": [128] * 8, "dropout": 0.2}}
    plain, ckpt = make_config(**sections), make_config(**(sections | {"model": sections["model"] | {"activation_checkpointing": ["net"]}}))
    x, y = next(iter(build_train_batches(prepare(plain).split("train"), plain, torch.device("cpu")).epoch(0)))
    grads, saved = [], []
    for config in (plain, ckpt):
        model = deep_mlp(config)
        counter = SavedBytes(set())
        torch.manual_seed(5)  # the same dropout masks; checkpointing must replay them in the recomputation
        with counter.hooks():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        saved.append(counter.total)
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    assert saved[1] < saved[0] / 10  # only the checkpointed block's input is kept


def test_activation_checkpointing_trains_bit_identically_with_ema(workdir: Path) -> None:
    sections = {"model": {"name": "mlp", "hidden": [32, 32], "dropout": 0.1}, "train": {"epochs": 1, "ema": {"decay": 0.9}}}
    train(make_config(**sections), run_dir=workdir / "plain")
    ckpt = sections | {"model": sections["model"] | {"activation_checkpointing": ["net.*"]}}
    train(make_config(**ckpt), run_dir=workdir / "ckpt")
    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(str(workdir / "plain" / name)), load_file(str(workdir / "ckpt" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_activation_checkpointing_wraps_only_outermost_matches() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 2))
    assert apply_activation_checkpointing(model, ["*"]) == ["0", "1"]
    assert "forward" not in vars(model[0][0])  # inside a checkpointed block: recomputed anyway
    with pytest.raises(ConfigError, match=r"model.activation_checkpointing\[1\]: 'blocks.\*' matches no submodule"):
        apply_activation_checkpointing(nn.Sequential(nn.Linear(2, 2)), ["0", "blocks.*"])


def test_activation_checkpointing_pattern_matching_nothing_exits_2(workdir: Path) -> None:
    cfg = write_config(workdir / "config.yaml", tiny_config())
    proc = run_cli("train", str(cfg), "model.activation_checkpointing=[blocks.*]", "--dry-run", cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    assert "model.activation_checkpointing[0]: 'blocks.*' matches no submodule" in proc.stderr and "Traceback" not in proc.stderr


def test_profiler_and_activation_checkpointing_may_change_on_resume_but_val_limits_may_not(workdir: Path) -> None:
    from taktstock.run_dir import RunDir
    from taktstock.training.resume import check_resume_compatible

    train(make_config(train={"epochs": 1}), run_dir=workdir / "run")
    observe = ["train.profile={start_step: 1, steps: 1}", "model.activation_checkpointing=[net]"]
    resumed = check_resume_compatible(RunDir(workdir / "run"), None, observe, force=False)
    assert resumed.train.profile is not None and resumed.model.activation_checkpointing == ["net"]
    with pytest.raises(ConfigError, match=r"train\.limit_val_batches"):
        check_resume_compatible(RunDir(workdir / "run"), None, ["train.limit_val_batches=2"], force=False)
