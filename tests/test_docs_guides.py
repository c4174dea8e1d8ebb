"""The guides cannot drift from the CLI and the schema: every command and YAML example of README.md and docs/*.md
is checked against the code, without training (tests/test_readme_commands.py runs the README's commands).

  * Every `taktstock ...` invocation (fenced blocks of any language, inline code spans, `python -m taktstock`,
    `torchrun ... -m taktstock`) names a real command, and each `--option` is one that command has.
  * Its config file and overrides (`train`, `tune`, `prepare`, `config show`, `pipeline dvc|airflow`, and DVC's
    `-S config.yaml:key=value`) resolve and validate as `taktstock` would load them. Placeholder files
    (`cfg.yaml`, `exp.yaml`, `sweep.yaml`, `CONFIG`) stand for the repository's own experiments.
  * Every ```yaml block whose top-level keys are config sections validates as an experiment.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

GUIDES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Placeholder config files the guides use, and the experiment each stands for here.
STANDS_FOR = {
    "CONFIG": "config.yaml",
    "cfg.yaml": "config.yaml",
    "exp.yaml": "config.yaml",
    "sweep.yaml": "experiments/sweep_digits.yaml",
}
# Config files an earlier command writes (a sweep's best.yaml, a trial's config): parsed, not resolved.
WRITTEN_BY_A_RUN = re.compile(r"(^|/)(best|trial)\.yaml$")
# Commands whose positional arguments are CONFIG [key=value ...].
CONFIG_COMMANDS = {
    ("train",),
    ("tune",),
    ("prepare",),
    ("config", "show"),
    ("pipeline", "dvc"),
    ("pipeline", "airflow"),
    ("submit", "slurm"),
}
# YAML fragments that are only valid on top of another experiment: the first key path -> that experiment.
FRAGMENT_BASE = {"logging.samples": "experiments/lm_stdlib.yaml"}
# Import paths of the guides' own example code (docs/custom-code.md): checked against the schema only.
EXAMPLE_MODULES = re.compile(r"cannot import module '(models|data|utils)\.")


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def command_lines(path: Path) -> list[tuple[str, str, str]]:
    """(file:line, text, next line) of every line of a fenced block, and of every inline code span that starts
    with taktstock (next line empty)."""
    text = path.read_text()
    out = []
    for block in re.finditer(r"^ *```[a-z]*\n(.*?)^ *```", text, re.S | re.M):
        first = _line(text, block.start(1))
        lines = block.group(1).replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            out.append((f"{path.name}:{first + i}", line, lines[i + 1] if i + 1 < len(lines) else ""))
    for span in re.finditer(r"(?<!`)`(taktstock [^`]+)`(?!`)", text):
        out.append((f"{path.name}:{_line(text, span.start())}", span.group(1), ""))
    return out


def invocations(line: str) -> list[list[str]]:
    """The arguments after each `taktstock` of a shell line (a `$ ` prompt, comments and `&&`/pipes/redirects cut)."""
    try:
        tokens = shlex.split(line.strip().removeprefix("$ "), comments=True)
    except ValueError:  # prose in a block, e.g. an unbalanced quote in an error message
        return []
    found: list[list[str]] = []
    current: list[str] | None = None
    for i, token in enumerate(tokens):
        if token == "taktstock" and (i == 0 or tokens[i - 1] in ("-m", "&&", ";") or tokens[i - 1].isspace()):
            current = []
            found.append(current)
        elif token in ("&&", ";", "|", ">", ">>", "\\") or token.isspace():  # `\ ` between side-by-side columns
            current = None
        elif current is not None:
            current.append(token)
    # `taktstock --help`, `taktstock ...` and prose such as `taktstock train (to first step)` are not commands.
    return [args for args in found if args and args[0].isidentifier() and not any("(" in a for a in args)]


def _cli() -> Any:
    import typer

    from taktstock import cli

    cli._register()
    return typer.main.get_command(cli.app)


def _split(root: Any, args: list[str]) -> tuple[tuple[str, ...], Any, list[str]]:
    """(command path, click command, remaining arguments)."""
    names: tuple[str, ...] = ()
    command = root
    while hasattr(command, "commands"):
        assert args and args[0] in command.commands, f"no command {' '.join([*names, *args[:1]])!r}"
        names, command, args = (*names, args[0]), command.commands[args[0]], args[1:]
    return names, command, args


def _check_options(names: tuple[str, ...], command: Any, args: list[str]) -> list[str]:
    """The positional arguments, after checking every --option against the command's own."""
    options = {opt: param for param in command.params if param.param_type_name == "option" for opt in param.opts}
    positional, i = [], 0
    while i < len(args):
        token = args[i].strip("[]")
        if token.startswith("--"):
            name = token.partition("=")[0]
            assert name in options, f"'taktstock {' '.join(names)}' has no option {name} (it has {sorted(options)})"
            if not options[name].is_flag and "=" not in token:
                i += 1  # its value
        elif not token.startswith("-"):
            positional.append(args[i])
        i += 1
    return positional


def _is_synopsis(args: list[str]) -> bool:
    return any(a.startswith("[") or a.endswith("]") or "|" in a or a.endswith("...") for a in args)


def _resolve(names: tuple[str, ...], args: list[str], positional: list[str]) -> None:
    from taktstock.config.loader import load_config

    if names not in CONFIG_COMMANDS or _is_synopsis(args):
        return
    config = None
    if positional and not ("=" in positional[0] or positional[0].startswith("~")):
        config, positional = positional[0], positional[1:]
    if config is None:
        config = "config.yaml"  # `train --resume RUN key=value` and `train key=value` (./config.yaml)
    config = STANDS_FOR.get(config, config)
    if WRITTEN_BY_A_RUN.search(config):
        return
    assert (REPO / config).is_file(), f"{config}: no such file in the repository"
    load_config(REPO / config, positional)


def _documented_invocations() -> list[tuple[str, list[str], str]]:
    """(file:line, arguments, the error the guide shows for it: a next line starting with `error: `)."""
    found = []
    for guide in GUIDES:
        for where, line, following in command_lines(guide):
            error = following.removeprefix("error: ") if following.startswith("error: ") else ""
            found += [(where, args, error) for args in invocations(line)]
    return found


def test_the_walk_finds_the_guides_commands() -> None:
    found = _documented_invocations()
    places = {where.partition(":")[0] for where, _, _ in found}
    assert {"README.md", "tuning.md", "pipelines.md", "distributed.md", "resume.md", "data.md"} <= places
    assert ["train", "cfg.yaml", "--nproc-per-node", "8", "--nnodes", "2"] == next(a for _, a, _ in found if "cfg.yaml" in a)
    assert any(error.startswith("override 'train.epcohs=3'") for _, _, error in found)
    assert invocations("$ torchrun --nproc-per-node 2 -m taktstock train c.yaml && taktstock runs  # x") == [
        ["train", "c.yaml"],
        ["runs"],
    ]


def test_every_documented_command_has_its_options_and_its_config_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # relative data paths and plugins as a user in the checkout sees them
    root = _cli()
    failures = []
    for where, args, error in _documented_invocations():
        try:
            names, command, rest = _split(root, args)
            _resolve(names, rest, _check_options(names, command, rest))
        except Exception as exc:  # every failure is collected and reported with its place
            if not error or str(exc) != error:
                failures.append(f"{where}: taktstock {shlex.join(args)}\n    {type(exc).__name__}: {exc}")
        else:
            if error:
                failures.append(f"{where}: taktstock {shlex.join(args)}\n    the guide shows 'error: {error}'; it succeeds")
    assert not failures, "\n".join(failures)


def test_dvc_experiment_parameters_in_the_guides_are_config_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from taktstock.config.loader import load_config

    monkeypatch.chdir(REPO)
    params = [
        (where, token.split(":", 1))
        for guide in GUIDES
        for where, line, _ in command_lines(guide)
        if line.lstrip().startswith("dvc exp run")
        for token in shlex.split(line, comments=True)
        if ".yaml:" in token
    ]
    assert len(params) >= 3
    for _where, (config, override) in params:  # a misspelt key raises ConfigError naming it
        load_config(REPO / config, [override])


def _yaml_blocks() -> list[tuple[str, str]]:
    out = []
    for guide in GUIDES:
        text = guide.read_text()
        for block in re.finditer(r"^( *)```yaml\n(.*?)^ *```", text, re.S | re.M):
            indent = len(block.group(1))
            body = "\n".join(line[indent:] for line in block.group(2).splitlines())
            out.append((f"{guide.name}:{_line(text, block.start(2))}", body))
    return out


def test_every_yaml_example_in_the_guides_is_a_valid_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    from taktstock.config.loader import read_yaml, validate, yaml_load
    from taktstock.config.schema import Config
    from taktstock.errors import ConfigError

    monkeypatch.chdir(REPO)
    checked, failures = 0, []
    for where, body in _yaml_blocks():
        raw = yaml_load(body)
        if not isinstance(raw, dict) or not set(raw) <= set(Config.model_fields):
            continue  # not an experiment (e.g. a comment-only block)
        first = next(iter(raw))
        key = f"{first}.{next(iter(raw[first]))}" if isinstance(raw[first], dict) and raw[first] else first
        if key in FRAGMENT_BASE:
            base, _ = read_yaml(REPO / FRAGMENT_BASE[key])
            raw = {**base, **{k: {**base.get(k, {}), **v} if isinstance(v, dict) else v for k, v in raw.items()}}
        try:
            validate(raw, {}, source=where)
        except ConfigError as exc:
            if not EXAMPLE_MODULES.search(str(exc)):
                failures.append(f"{where}: {exc}")
                continue
            try:  # the guide's own example classes are not importable here: the schema still applies
                Config.model_validate(raw)
            except Exception as schema_exc:
                failures.append(f"{where}: {schema_exc}")
        checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 20, checked


def test_the_guides_name_every_built_in_model() -> None:
    from taktstock.models.zoo import list_models

    builtin = list_models("builtin")
    for guide, pattern in [("README.md", r"`model\.name` \((.*?)`torchvision"), ("docs/getting-started.md", r"Built-in models.*?: (.*?);")]:
        listed = re.findall(r"`([a-z_]+)`", re.search(pattern, (REPO / guide).read_text(), re.S).group(1))
        assert sorted(listed) == sorted(builtin), (guide, listed)
