"""`taktstock config schema|docs`: the JSON Schema accepts every shipped config and rejects what the
loader rejects; docs/config.md is exactly what the generator writes (it cannot drift)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO, run_cli

from taktstock.config.loader import load_config
from taktstock.config.reference import markdown_reference
from taktstock.config.schema import Config
from taktstock.errors import ConfigError

TEMPLATES = REPO / "taktstock" / "templates" / "examples"
SHIPPED = sorted(
    [
        REPO / "config.yaml",
        *(REPO / "experiments").glob("*.yaml"),
        *TEMPLATES.glob("*/config.yaml"),
        *TEMPLATES.glob("*/experiments/*.yaml"),
    ]
)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(run_cli("config", "schema", check=True).stdout)  # what editors get
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_schema_accepts_every_shipped_config(validator: jsonschema.Draft202012Validator, path: Path) -> None:
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize(
    "mistake",
    [
        {"train": {"epcohs": 3}},  # unknown key
        {"train": {"epochs": 0}},  # below the minimum
        {"scheduler": {"name": "linear"}},  # not one of the choices
        {"data": {"val_fraction": "a lot"}},  # wrong type
        {"plugins": "models.net"},  # a list is expected
        {"tune": {"space": {"optim.lr": {"type": "float", "bounds": [0, 1]}}}},  # unknown key in a sub-section
    ],
)
def test_schema_and_loader_reject_the_same_mistakes(validator: jsonschema.Draft202012Validator, mistake: dict, tmp_path: Path) -> None:
    assert list(validator.iter_errors(mistake)), "the schema accepted it"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(mistake))
    with pytest.raises(ConfigError):
        load_config(path)


def test_schema_lets_model_and_optimizer_arguments_through(validator: jsonschema.Draft202012Validator) -> None:
    config = {"model": {"name": "mlp", "hidden": [8]}, "optim": {"name": "sgd", "momentum": 0.9}}
    assert not list(validator.iter_errors(config))


def test_every_key_has_a_description() -> None:
    def walk(model: type, prefix: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + name)
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                missing += walk(ann, f"{prefix}{name}.")
        return missing

    assert walk(Config, "") == []


def test_docs_config_md_is_generated_and_up_to_date(tmp_path: Path) -> None:
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == markdown_reference(), "docs/config.md is stale: run `taktstock config docs --out docs/config.md`"
    run_cli("config", "docs", "--out", str(tmp_path / "config.md"), check=True)
    assert (tmp_path / "config.md").read_text() == committed


def test_reference_lists_every_key_with_type_and_default() -> None:
    text = markdown_reference()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    assert rows["train.epochs"].split("|")[2:4] == [" int, ≥ 1 ", " `10` "]
    assert rows["train.max_steps"].split("|")[2].strip() == "int or null, ≥ 1"
    assert rows["metrics.mode"].split("|")[2].strip() == '"min" / "max"'
    assert "tune.space.<key>.type" in rows and "plugins" in rows and "model.<argument>" in rows
    for section, field in Config.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        keys = [f"{section}.{k}" for k in sub if k != "space"] if sub else [section]
        assert all(k in rows or any(r.startswith(k + ".") for r in rows) for k in keys), section
