"""Evaluate a trained run on the test split.

    python evaluate.py                          # the newest run under experiments/runs
    python evaluate.py experiments/runs/NAME --split val --checkpoint last

Writes RUN_DIR/eval/metrics.json (and for classification report.json and confusion_matrix.png).
"""

import os
import sys
from pathlib import Path

from taktstock.cli import main

ROOT = Path(__file__).resolve().parent


def taktstock_args(argv: list[str]) -> list[str]:
    """Without a run directory, pick the newest run of config.yaml's experiment.output_dir."""
    args = [str(Path(a).resolve()) if not a.startswith("-") and Path(a).exists() else a for a in argv]
    if not args or args[0].startswith("-"):
        from utils.runs import newest_run

        args.insert(0, str(newest_run(ROOT / "config.yaml")))
    return ["evaluate", *args]


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    try:
        sys.argv[1:] = taktstock_args(sys.argv[1:])
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()
