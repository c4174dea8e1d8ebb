"""Evaluate a run: equal to `taktstock evaluate` (python evaluate.py RUN_DIR --split test)."""

import sys

from taktstock.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["evaluate"]
    main()
