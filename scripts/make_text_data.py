"""Write the data of the text example experiments (no download):

  data/raw/topics.jsonl   labelled sentences about sport, food and music (experiments/text_topics.yaml)
  data/raw/stdlib/*.txt   this Python's own standard-library modules as text documents (experiments/lm_stdlib.yaml)

Usage: python scripts/make_text_data.py [--out data/raw] [--sentences 3000] [--modules 120]
"""

from __future__ import annotations

import argparse
import json
import random
import sysconfig
from pathlib import Path

TOPICS = {
    "sport": ["match", "goal", "team", "coach", "league", "striker", "season", "referee", "keeper", "final"],
    "food": ["bread", "soup", "cheese", "recipe", "oven", "garlic", "kitchen", "pasta", "butter", "spice"],
    "music": ["guitar", "melody", "concert", "drummer", "chorus", "album", "violin", "tempo", "singer", "band"],
}
FILLER = ["the", "a", "was", "very", "and", "then", "we", "saw", "about", "new", "old", "today", "our", "great", "after"]


def topic_sentences(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Sentences whose topic words give away the label, among shared filler words; lengths vary a lot."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % len(TOPICS)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 30))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS[label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def stdlib_documents(out: Path, count: int) -> int:
    """Copy the first `count` top-level stdlib modules (sorted by name) as .txt files; returns how many."""
    modules = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:count]
    out.mkdir(parents=True, exist_ok=True)
    for src in modules:
        (out / f"{src.stem}.txt").write_text(src.read_text(encoding="utf-8", errors="replace"), encoding="utf-8")
    return len(modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--modules", type=int, default=120)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    topics = args.out / "topics.jsonl"
    topics.write_text("".join(json.dumps(r) + "\n" for r in topic_sentences(args.sentences)))
    n = stdlib_documents(args.out / "stdlib", args.modules)
    print(f"wrote {topics} ({args.sentences} sentences) and {n} documents under {args.out / 'stdlib'}")


if __name__ == "__main__":
    main()
