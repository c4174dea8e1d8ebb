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


_TITLES = {"acc": "accuracy", "f1": "F1", "loss": "loss", "precision": "precision", "recall": "recall", "ppl": "perplexity"}
_SPLITS = {"train": 0, "val": 1, "test": 2}
MAX_COLUMNS = 3  # 3 panels of 5 in at 100 dpi: 1500 px, the width of a laptop screen


def learning_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """A grid of panels, x axis = optimizer step: one per metric (train per step, train per epoch and
    val of the same metric together) and one with the learning rate of every parameter group."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    lrs: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for k, v in r.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or k in ("step", "epoch"):
                continue
            if k == "lr" or k.startswith("lr/"):
                xs, ys = lrs.setdefault(k, ([], []))
            elif "/" in k and k.split("/", 1)[0] in _SPLITS:
                name = k.split("/", 1)[1].removesuffix("_step")
                xs, ys = series.setdefault(name, {}).setdefault(k, ([], []))
            else:  # device statistics and other non-curves stay in metrics.jsonl and the dashboards
                continue
            xs.append(r["step"])
            ys.append(v)
    if any(k.startswith("lr/") for k in lrs):
        lrs.pop("lr", None)  # with several groups `lr` repeats the first group's curve
    panels = len(series) + bool(lrs)
    if not panels:
        return None
    plt = _pyplot()
    cols = min(MAX_COLUMNS, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (name, lines) in zip(flat, sorted(series.items(), key=lambda kv: (kv[0] != "loss", kv[0])), strict=False):
        for key, (xs, ys) in sorted(lines.items(), key=lambda kv: (_SPLITS[kv[0].split("/")[0]], not kv[0].endswith("_step"))):
            ax.plot(xs, ys, label=_line_label(key), **_line_style(key, len(xs)))
        ax.set_title(_TITLES.get(name, name.replace("_", " ")))
        _finish(ax)
    if lrs:
        ax = flat[len(series)]
        names = group_names([k.removeprefix("lr/") for k in lrs if k != "lr"])
        for i, (key, (xs, ys)) in enumerate(lrs.items()):
            # Groups often share a schedule: dashes keep an overlaid curve visible.
            ax.plot(xs, ys, label=names.get(key.removeprefix("lr/"), "learning rate"), linestyle=("-", "--", ":", "-.")[i % 4])
        ax.set_title("learning rate")
        _finish(ax)
    for ax in flat[panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _line_label(key: str) -> str:
    split = key.split("/", 1)[0]
    if split == "train":
        return "train (per step)" if key.endswith("_step") else "train (epoch mean)"
    return split


def _line_style(key: str, n: int) -> dict[str, Any]:
    if key.endswith("_step"):  # the noisy per-interval curve stays in the background
        return {"alpha": 0.45, "linewidth": 1}
    return {"marker": "o" if n < 50 else None, "markersize": 4, "linewidth": 1.8}


def _finish(ax: Any) -> None:
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def group_names(labels: list[str]) -> dict[str, str]:
    """Parameter-group labels of the logs ('default', 'default/no_decay', 'head/layer3') as words."""
    out = {}
    for label in labels:
        parts = label.split("/")
        words = (
            ["all other parameters" if any(not p.startswith("default") for p in labels) else "model"]
            if parts[0] == "default"
            else [parts[0]]
        )
        for part in parts[1:]:
            if part.startswith("layer") and part[5:].isdigit():
                words.append(f"layer {part[5:]}")
            elif part == "no_decay":
                words.append("no weight decay (biases, norms)")
        if "no_decay" not in parts and f"{label}/no_decay" in labels:
            words.append("with weight decay")
        out[label] = ", ".join(words)
    return out


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
