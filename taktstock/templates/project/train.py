"""Train this project's model with taktstock.

    python train.py                            # config.yaml
    python train.py train.epochs=5 optim.lr=3e-4
    python train.py experiments/wide.yaml --evaluate
    python train.py --dry-run                  # config, model summary, batch shapes; no training

Every `taktstock train` option works here (see `taktstock train --help`). Paths inside configs
(data, runs) are relative to this directory, wherever you start the script from.
"""

import os
import sys
from pathlib import Path

from taktstock.cli import main

ROOT = Path(__file__).resolve().parent


def taktstock_args(argv: list[str]) -> list[str]:
    """Existing paths become absolute (we chdir to ROOT); config.yaml is used when no config is given."""
    args = [str(Path(a).resolve()) if not a.startswith("-") and "=" not in a and Path(a).exists() else a for a in argv]
    if "--resume" not in args and (not args or args[0].startswith("-") or "=" in args[0]):
        args.insert(0, "config.yaml")
    return ["train", *args]


if __name__ == "__main__":
    sys.argv[1:] = taktstock_args(sys.argv[1:])
    os.chdir(ROOT)
    main()
