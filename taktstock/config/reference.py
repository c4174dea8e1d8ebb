"""The config reference and JSON Schema, generated from the typed schema so they never drift."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from taktstock.config.schema import Config


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "taktstock experiment"
    return schema


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "").replace("taktstock.config.schema.", "")


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name != "space":
            rows.extend(_rows(ann, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        default_text = json.dumps(default.model_dump() if isinstance(default, BaseModel) else default, default=str)
        rows.append((key, _type_name(ann), default_text, field.description or ""))
    return rows


def markdown_reference() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from `taktstock/config/schema.py` by `taktstock config docs`; do not edit by hand.",
        "Model constructor arguments sit under `model` next to `name` (see `taktstock config show`).",
        "",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for key, typ, default, desc in _rows(Config, ""):
        lines.append(f"| `{key}` | `{typ}` | `{default}` | {desc} |".replace("`|", "`\\|").replace(" | None`", " \\| None`"))
    return "\n".join(lines) + "\n"
