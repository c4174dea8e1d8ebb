"""Small text data made on the spot: labelled sentences and a corpus of Python's own source files."""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

TOPICS = {
    "sport": ["match", "goal", "team", "coach", "league", "striker", "season", "referee"],
    "food": ["bread", "soup", "cheese", "recipe", "oven", "garlic", "kitchen", "pasta"],
    "music": ["guitar", "melody", "concert", "drummer", "chorus", "album", "violin", "tempo"],
}
FILLER = ["the", "a", "was", "very", "and", "then", "we", "saw", "about", "new", "old", "today"]


def labelled_sentences(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Sentences whose topic words give away the label, padded with shared filler words; lengths vary a lot."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % len(TOPICS)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 20))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS[label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def python_sources(folder: Path, count: int, start: int = 0) -> list[Path]:
    """Copy `count` of the standard library's own .py files into `folder` as .txt documents."""
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[start : start + count]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in stdlib:
        dst = folder / f"{src.stem}.txt"
        dst.write_text(src.read_text(encoding="utf-8", errors="replace"))
        out.append(dst)
    return out
