"""Write the data of the text example experiments (no download):

  data/raw/topics.jsonl   labelled sentences about sport, food and music (experiments/text_topics.yaml)
  data/raw/stdlib/*.txt   this Python's own standard-library modules as text documents (experiments/lm_stdlib.yaml)

Usage: python scripts/make_text_data.py [--out data/raw] [--sentences 3000] [--modules 120]

The tests and the text benchmark make their data with these same functions (through tests/text_helpers.py).
"""

from __future__ import annotations

import argparse
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
    """`rows` as JSON Lines at `path`; returns `path`."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def python_sources(folder: Path, count: int, start: int = 0) -> list[Path]:
    """Copy `count` of the standard library's top-level .py files (sorted by name, from `start`) into `folder` as
    .txt documents; returns their paths."""
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[start : start + count]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in stdlib:
        dst = folder / f"{src.stem}.txt"
        dst.write_text(src.read_text(encoding="utf-8", errors="replace"), encoding="utf-8")
        out.append(dst)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--modules", type=int, default=120)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    topics = write_jsonl(args.out / "topics.jsonl", labelled_sentences(args.sentences))
    n = len(python_sources(args.out / "stdlib", args.modules))
    print(f"wrote {topics} ({args.sentences} sentences) and {n} documents under {args.out / 'stdlib'}")


if __name__ == "__main__":
    main()
