"""Train an experiment: equal to `taktstock train` (python train.py config.yaml train.epochs=5)."""

import sys

from taktstock.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["train"]
    main()
