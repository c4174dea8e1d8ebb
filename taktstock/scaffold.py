"""`taktstock new`: write a ready-to-train project from the templates shipped in taktstock/templates/.

templates/project/ holds what every project has (train.py, evaluate.py, utils/, dvc.yaml, ...);
templates/examples/<name>/ adds a working example (dataset, preprocessing, model, tests, configs).
Text files get a few placeholders filled in (project name, description).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from taktstock.errors import UserError


@dataclass(frozen=True)
class Example:
    description: str
    alt_config: str  # the variant under experiments/


EXAMPLES: dict[str, Example] = {
    "tabular": Example(
        "wine cultivar classification from 13 chemical measurements (scikit-learn's bundled wine data, "
        "written to a CSV by `data/preprocess.py`), with a residual MLP (`models/net.py`).",
        "wide.yaml",
    ),
    "image": Example(
        "handwritten digit recognition from 8x8 images (scikit-learn's bundled digits, written to PNG files "
        "by `data/preprocess.py`), with a small CNN (`models/net.py`).",
        "deeper.yaml",
    ),
    "regression": Example(
        "disease progression regression from 10 patient measurements (scikit-learn's bundled diabetes data, "
        "written to a CSV by `data/preprocess.py`), with an MLP regressor (`models/net.py`).",
        "huber.yaml",
    ),
}

# Files whose text gets the placeholders filled in; everything else is copied byte for byte.
_TEXT_SUFFIXES = {".md", ".yaml", ".yml", ".txt", ".ini", ".py", ".cfg", ".toml"}
# Names package data cannot carry (setuptools' globs skip dotfiles).
_RENAMES = {"gitignore": ".gitignore"}


def project_slug(directory: Path) -> str:
    """A name usable as experiment name and path component, derived from the directory name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", directory.name).strip("-.")
    return slug or "project"


def _walk(root: Traversable, prefix: str = "") -> dict[str, Traversable]:
    files: dict[str, Traversable] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name in ("__pycache__", ".pytest_cache") or entry.name.endswith(".pyc"):
            continue
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            files.update(_walk(entry, rel + "/"))
        else:
            files[rel] = entry
    return files


def template_files(example: str) -> dict[str, Traversable]:
    """Relative output path -> template file: the common project overlaid with the example."""
    templates = resources.files("taktstock") / "templates"
    files = _walk(templates / "project")
    files.update(_walk(templates / "examples" / example))
    return {"/".join(_RENAMES.get(p, p) for p in rel.split("/")): f for rel, f in files.items()}


def create_project(directory: str | Path, example: str = "tabular", force: bool = False) -> list[Path]:
    """Write the project into `directory`; refuses a non-empty directory unless `force`. Returns the files written."""
    if example not in EXAMPLES:
        raise UserError(f"--example: unknown example '{example}' (choose from {', '.join(EXAMPLES)})")
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UserError(f"{target} is not empty; choose a new directory or pass --force to write the template files into it")
    from taktstock import __version__

    values = {
        "__PROJECT__": project_slug(target.resolve()),
        "__DESCRIPTION__": EXAMPLES[example].description,
        "__ALT_CONFIG__": EXAMPLES[example].alt_config,
        "__EXAMPLE__": example,
        "__TAKTSTOCK_VERSION__": __version__,
    }
    written = []
    for rel, source in template_files(example).items():
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        if out.suffix in _TEXT_SUFFIXES:
            text = data.decode()
            for key, value in values.items():
                text = text.replace(key, value)
            data = text.encode()
        out.write_bytes(data)
        written.append(out)
    return written
