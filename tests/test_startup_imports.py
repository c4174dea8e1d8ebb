"""Start-up stays fast because heavy modules are imported only when used (deterministic checks, no timing)."""

from __future__ import annotations

import sys

from tests.conftest import cli_env, run_cli, tiny_config, write_config

HEAVY_FOR_HELP = ("torch", "mlflow", "optuna", "tensorboard", "matplotlib", "sklearn", "wandb", "ray")
# Not needed before the first optimizer step of a run whose prepared data is cached.
# (torch._dynamo/_inductor are not listed: torch.optim's constructor imports them for every PyTorch loop.)
HEAVY_FOR_FIRST_STEP = ("sklearn", "torchmetrics", "matplotlib", "scipy", "mlflow", "optuna")

PROBE = """
import sys

HEAVY = {heavy!r}


class Probe:
    def on_step_end(self, trainer):
        loaded = sorted(m for m in HEAVY if m in sys.modules)
        print("LOADED_AT_FIRST_STEP", ",".join(loaded), file=sys.stderr, flush=True)
        raise SystemExit(0)
"""


def test_help_imports_no_heavy_modules() -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "taktstock", "--help"], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "train" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "typer" in imported  # the probe sees imports at all
    assert not {m for m in imported if m.split(".")[0] in HEAVY_FOR_HELP}


def test_train_imports_nothing_heavy_before_the_first_step_on_a_cache_hit(workdir) -> None:
    (workdir / "startup_probe.py").write_text(PROBE.format(heavy=HEAVY_FOR_FIRST_STEP))
    config = tiny_config(train={"epochs": 1, "batch_size": 64, "callbacks": ["startup_probe:Probe"]})
    config["logging"] = {"tensorboard": True, "plots": True}
    path = write_config(workdir / "exp.yaml", config)
    env = cli_env(PYTHONPATH=f"{workdir}:{cli_env()['PYTHONPATH']}")
    first = run_cli("train", str(path), cwd=workdir, env=env, fresh=True)  # prepares the data cache
    assert "LOADED_AT_FIRST_STEP" in first.stderr, first.stderr[-2000:]
    second = run_cli("train", str(path), cwd=workdir, env=env, fresh=True)  # cache hit
    line = next(x for x in second.stderr.splitlines() if x.startswith("LOADED_AT_FIRST_STEP"))
    assert line.split(" ", 1)[1:] in ([], [""]), line


def test_loading_a_config_checks_optimizer_values_without_importing_torch_dynamo(workdir) -> None:
    """evaluate, predict, export and `config show` load configs but build no optimizer: the optimizer's value checks
    run on an empty parameter list, so torch.optim's first add_param_group (which imports torch._dynamo, ~2 s) is skipped."""
    import subprocess

    path = write_config(workdir / "exp.yaml", tiny_config())
    probe = (
        "import sys\nfrom taktstock.config.loader import load_config\n"
        f"load_config({str(path)!r}, ['optim.name=sgd', 'optim.lr=0.1'])\n"
        "print('DYNAMO', 'torch._dynamo' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "DYNAMO False" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    # The checks still run: SGD refuses Nesterov without momentum, before anything is written.
    bad = run_cli("train", str(path), "optim.name=sgd", "optim.nesterov=true", "--run-dir", "run", cwd=workdir)
    assert bad.returncode == 2 and "optim: SGD rejects the given arguments (Nesterov momentum requires" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (workdir / "run").exists()


def test_an_optimizer_that_reads_its_parameters_first_is_checked_on_a_real_parameter() -> None:
    import torch

    from taktstock.config.loader import _optimizer_rejects

    class FirstParam(torch.optim.SGD):
        def __init__(self, params, lr: float = 0.1) -> None:
            params = list(params)
            self.first = params[0]  # IndexError on an empty list: the empty-list shortcut cannot decide
            if lr > 1:
                raise ValueError(f"lr {lr} too large")
            super().__init__(params, lr=lr)

    assert _optimizer_rejects(FirstParam, {"lr": 0.5}) is None
    assert str(_optimizer_rejects(FirstParam, {"lr": 2.0})) == "lr 2.0 too large"
    assert _optimizer_rejects(torch.optim.AdamW, {"lr": 1e-3}) is None
    assert "Invalid beta parameter" in str(_optimizer_rejects(torch.optim.AdamW, {"betas": (2.0, 0.9)}))
