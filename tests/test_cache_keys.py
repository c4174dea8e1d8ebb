"""The cache keys of prepared data stay what they were: a changed key silently invalidates every user's prepared
caches, so a refactoring must leave these pinned values alone (a deliberate change bumps a *_PREP_VERSION and
updates them here)."""

from __future__ import annotations

from typing import Any

import pytest

from taktstock.config.schema import Config
from taktstock.data.images.prepare import cache_key, cache_settings
from taktstock.data.prepare import fingerprint
from taktstock.data.text.prepared import text_fingerprint


def _config(**data: Any) -> Config:
    return Config.model_validate({"seed": 3, "data": {"val_fraction": 0.2, "test_fraction": 0.1} | data})


def _image_key(config: Config) -> str:
    # prepare_images's own key function; the file index's fingerprint is a stand-in
    return cache_key(cache_settings(config), "index")


TOKENIZER = {"train": "bpe", "vocab_size": 100}
KEYS = [
    ("arrays", lambda: fingerprint(_config(source="digits"), "digits:v1"), "b10ba5a82256d9a4"),
    (
        "arrays, no stratify",
        lambda: fingerprint(_config(source="csv", path="t.csv", target="y", stratify=False), "csv:x"),
        "e709c2928c20989e",
    ),
    ("images", lambda: _image_key(_config(source="imagefolder", path="img", image_size=16, channels=1)), "ccc93d9dd5947125"),
    ("images, manifest", lambda: _image_key(_config(source="image_csv", path="m.csv", target="y", stratify=False)), "e67bd6314ca9beb8"),
    (
        "text",
        lambda: text_fingerprint(_config(source="text", path="t.jsonl", target="label", tokenizer=TOKENIZER), "h", "text"),
        "71983aa2fe3c8cf1",
    ),
    ("corpus", lambda: text_fingerprint(_config(source="corpus", path="c", tokenizer=TOKENIZER), "h", "corpus"), "67db114bbf77c195"),
]


@pytest.mark.parametrize(("kind", "key", "pinned"), KEYS, ids=[k[0] for k in KEYS])
def test_prepared_cache_keys_are_unchanged(kind: str, key: Any, pinned: str) -> None:
    assert key() == pinned, f"the {kind} cache key changed: users' prepared caches would be rebuilt"
