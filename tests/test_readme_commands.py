"""Every fenced `bash` command of README.md runs as written (shortened to one epoch), so the README cannot drift.

The commands run in README order in a temporary copy of the repository, with HOME pointing into it.
General rules, so commands added later are covered without editing this file:
  * `taktstock train ...` (and a project's `python train.py ...`) get `train.epochs=1` appended;
    `taktstock tune` runs one trial in one worker (`--trials 1 --workers 1`, `train.epochs=1`).
  * RUN_DIR, RUN_A, RUN_B (any all-caps RUN placeholder) are one shared run the test trains first.
  * An input file a `predict` command names that does not exist is written from the shared run's data.
  * `taktstock`, `python`, `pytest`, `dvc` run with this interpreter and this checkout; `cd` applies to
    the rest of its line; a line whose command is skipped (below) is skipped as a whole.
A command fails the test on a non-zero exit or a traceback in its output.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli

# Commands that are not run, each with why. A rule is a regular expression matched against the command.
SKIP: list[tuple[str, str]] = [
    (r"^make\b", "builds a new 5 GB .venv; `make test` is this suite"),
    (r"^source\b", "activates .venv; the test already runs in the environment"),
    (r"^(mlflow ui|tensorboard)\b", "a web server"),
    (r"mlflow models serve", "a model server (tests/test_promote_deploy.py serves a model on 127.0.0.1)"),
    (r"--nnodes [2-9]|--master-addr", "multi-node: needs other machines"),
    (r"--storage postgresql", "needs a PostgreSQL server (tests/test_tune.py starts its own)"),
    (r"--backend ray", "starts a Ray cluster (tens of seconds; tests/test_tune.py runs Ray Tune)"),
    (r"--nproc-per-node|^torchrun\b", "multi-process training: tests/test_distributed.py; too slow for this walk's budget"),
    (r"^taktstock submit slurm\b", "needs a SLURM cluster: tests/test_slurm.py starts one and submits through it"),
    (r"^dvc (repro|exp run)\b", "re-trains the root pipeline's full config.yaml; tests/test_dvc.py runs dvc repro on a small one"),
    (r"logging\.wandb\.enabled=true", "W&B is not installed in this environment"),  # dropped below when wandb imports
]

PLACEHOLDER = re.compile(r"^RUN(_[A-Z]+)?$")  # RUN_DIR, RUN_A, RUN_B


@dataclass
class Line:
    text: str  # the command line as the README shows it (continuations joined, comment dropped)
    commands: list[list[str]]  # split at &&


def readme_lines(readme: Path = REPO / "README.md") -> list[Line]:
    """Every command line of the README's ```bash blocks."""
    out: list[Line] = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), re.S):
        for text in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(text, comments=True)
            if not tokens:
                continue
            commands, current = [], []
            for token in tokens:
                if token == "&&":
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            commands.append(current)
            out.append(Line(shlex.join(tokens), commands))
    return out


def skip_reason(line: Line) -> str | None:
    rules = SKIP
    try:
        import wandb  # noqa: F401

        rules = [r for r in SKIP if "wandb" not in r[0]]
    except ImportError:
        pass
    for command in line.commands:
        text = shlex.join(command)
        for pattern, reason in rules:
            if re.search(pattern, text):
                return reason
    return None


def shortened(command: list[str], shared_run: Path, home: Path | None = None) -> list[str]:
    """The command with the general rules applied (one epoch, one trial, placeholders, `~/` as the shell expands it)."""
    args = [str(shared_run) if PLACEHOLDER.match(a) else a for a in command]
    if home is not None:  # only `~/...`: `~key` is an override that deletes a key
        args = [str(home / a[2:]) if a.startswith("~/") else a for a in args]
    if args[:2] == ["taktstock", "tune"]:
        for flag, value in (("--trials", "1"), ("--workers", "1")):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        args.append("train.epochs=1")
    elif args[:2] == ["taktstock", "train"] or args[:2] == ["python", "train.py"]:
        args.append("train.epochs=1")
    return args


def executable(args: list[str]) -> list[str]:
    head, rest = args[0], args[1:]
    if head == "taktstock":
        return [sys.executable, "-m", "taktstock", *rest]
    if head == "python":
        return [sys.executable, *rest]
    if head == "pytest":
        return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *rest]
    if head == "dvc":
        return [str(Path(sys.executable).parent / "dvc"), *rest]
    return args


def write_predict_input(args: list[str], cwd: Path, run: Path) -> None:
    """`taktstock predict RUN FILE.csv`: a missing FILE.csv gets raw rows with the run's feature columns."""
    if args[:2] != ["taktstock", "predict"] or len(args) < 4 or (cwd / args[3]).exists():
        return
    import json

    import sklearn.datasets

    names = json.loads((run / "preprocessing.json").read_text()).get("feature_names") or []
    data = sklearn.datasets.load_digits().data[:20]
    header = names or [f"x{i}" for i in range(data.shape[1])]
    rows = [",".join(header)] + [",".join(str(v) for v in row) for row in data]
    (cwd / args[3]).write_text("\n".join(rows) + "\n")


def _copy_repo(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "runs", "sweeps", "mlflow.db", "mlartifacts", "prepared", ".dvc")
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def test_readme_lines_are_found_and_every_skip_rule_still_matches_one() -> None:
    lines = readme_lines()
    assert any(line.commands[0][:2] == ["taktstock", "train"] for line in lines)
    for pattern, _ in SKIP:
        if "wandb" in pattern:
            continue
        assert any(re.search(pattern, shlex.join(c)) for line in lines for c in line.commands), f"stale skip rule: {pattern}"


@pytest.mark.timeout(1200)  # ~20 CLI processes in sequence: minutes when other jobs share the cores
def test_every_readme_command_runs(tmp_path: Path) -> None:
    repo = _copy_repo(tmp_path / "repo")
    home = tmp_path / "home"
    env = cli_env(OMP_NUM_THREADS="1", HOME=str(home))
    shared = repo / "experiments" / "runs" / "shared"
    # Once through the installed console script (pyproject's [project.scripts]), as a user types `taktstock`.
    script = Path(sys.executable).parent / "taktstock"
    assert script.is_file(), f"the console script is not installed next to {sys.executable} (pip install -e .)"
    first = [str(script), "train", "config.yaml", "train.epochs=1", "--run-dir", str(shared)]
    proc = subprocess.run(first, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (shared / "model.safetensors").is_file(), proc.stdout + proc.stderr

    failures, ran, skipped = [], [], []
    for line in readme_lines():
        reason = skip_reason(line)
        if reason:
            skipped.append(f"{line.text}  ({reason})")
            continue
        cwd = repo
        for command in line.commands:
            if command[0] == "cd":
                cwd = cwd / command[1]
                continue
            args = shortened(command, shared, home)
            write_predict_input(args, cwd, shared)
            start = time.monotonic()
            if args[0] == "taktstock":  # forked from the pre-imported CLI (the copy's package is this checkout's)
                proc = run_cli(*args[1:], cwd=cwd, env=env, timeout=300)
            else:
                proc = subprocess.run(executable(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            ran.append(f"{time.monotonic() - start:5.1f}s  {shlex.join(args)}")
            print(ran[-1], file=sys.stderr, flush=True)
            output = proc.stdout + proc.stderr
            if proc.returncode != 0 or "Traceback (most recent call last)" in output:
                failures.append(f"$ {shlex.join(args)}  (in {cwd.relative_to(tmp_path)}, exit {proc.returncode})\n{output[-2000:]}")
                break
    print(f"ran {len(ran)} commands:\n  " + "\n  ".join(ran) + f"\nskipped {len(skipped)} lines:\n  " + "\n  ".join(skipped))
    assert not failures, "README commands failed:\n\n" + "\n\n".join(failures)
    assert len(ran) >= 15, ran


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("taktstock train config.yaml optim.lr=3e-4", "taktstock train config.yaml optim.lr=3e-4 train.epochs=1"),
        ("taktstock tune s.yaml --trials 20 --workers 2", "taktstock tune s.yaml --trials 1 --workers 1 train.epochs=1"),
        ("taktstock export RUN_DIR --format onnx", "taktstock export /r --format onnx"),
        ("taktstock compare RUN_A RUN_B", "taktstock compare /r /r"),
        ("taktstock pipeline airflow c.yaml --out ~/dags", "taktstock pipeline airflow c.yaml --out /h/dags"),
        ("taktstock config show c.yaml ~model.dropout", "taktstock config show c.yaml '~model.dropout'"),
    ],
)
def test_rules_shorten_and_fill_in_commands(command: str, expected: str) -> None:
    assert shlex.join(shortened(shlex.split(command), Path("/r"), Path("/h"))) == expected
