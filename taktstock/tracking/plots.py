"""PNG plots: learning curves from metrics.jsonl, confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # Headless: never needs a display.
    import matplotlib.pyplot as plt

    return plt


def learning_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One panel per metric (train and val of the same name overlaid), x axis = optimizer step."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for r in records:
        for k, v in r.items():
            if "/" not in k or not isinstance(v, (int, float)):
                continue
            _split, name = k.split("/", 1)
            name = name.removesuffix("_step")
            xs, ys = series.setdefault(name, {}).setdefault(k, ([], []))
            xs.append(r["step"])
            ys.append(v)
    if not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.5), squeeze=False)
    for ax, (name, lines) in zip(axes[0], sorted(series.items()), strict=True):
        for label, (xs, ys) in sorted(lines.items()):
            ax.plot(xs, ys, label=label, marker="." if len(xs) < 50 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overlay_curves(runs: dict[str, list[dict[str, Any]]], metric: str, path: Path) -> Path:
    """One metric of several runs on the same axes (used by `taktstock compare`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, records in runs.items():
        pts = [(r["step"], r[metric]) for r in records if metric in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=name, marker=".")
    ax.set_title(metric)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(matrix: np.ndarray, class_names: list[str], path: Path, title: str = "confusion matrix") -> Path:
    plt = _pyplot()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * n, 1 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(
                j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color="black" if matrix[i, j] < matrix.max() / 2 else "white"
            )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
