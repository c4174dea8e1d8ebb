"""Small text data made on the spot: labelled sentences and a corpus of Python's own source files.

The generators are the ones `scripts/make_text_data.py` writes the example experiments' data with, so the tests
train on what users are shown; this module is their import path for the tests and benchmarks.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # as tests/test_images.py does
from make_text_data import labelled_sentences, python_sources, write_jsonl

__all__ = ["labelled_sentences", "python_sources", "write_jsonl"]
