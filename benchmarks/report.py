"""`python -m benchmarks.report RESULTS.json`: the results as Markdown tables (for docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(r: dict[str, Any]) -> str:
    env = r["environment"]
    out = [
        f"Date {env['date']}; device {env['device']} ({env.get('gpu') or str(env['cpu_count']) + ' CPU cores'}); "
        f"torch {env['torch']} ({env['torch_threads']} thread(s)); numpy {env['numpy']}; lightning {env['lightning']}; "
        f"accelerate {env['accelerate']}; torchmetrics {env['torchmetrics']}; Python {env['python']}; "
        f"{r['options']['repeats'] if not r['options'].get('quick') else 2} interleaved rounds; suite time {r.get('elapsed_s')} s.",
        "",
    ]
    for name in ("mlp", "resnet"):
        rows = r.get(name)
        if not rows:
            continue
        out += [
            f"**{name}** (batch {rows[0]['batch_size']}, {rows[0]['samples']} samples per run)",
            "",
            "| contender | samples/s (median) | x hand-written DataLoader (median of paired ratios) | best samples/s | x (best/best) |",
            "|---|---:|---:|---:|---:|",
        ]
        for x in rows:
            out.append(
                f"| {x['contender']} | {_f(x['samples_per_s'], ',.0f')} | {_f(x['ratio'], '.3f')} | "
                f"{_f(x.get('best_samples_per_s'), ',.0f')} | {_f(x.get('best_ratio'), '.3f')} |"
            )
        out.append("")
    if r.get("memory"):
        out += [
            "**peak memory** (fresh process per run)",
            "",
            "| workload | contender | peak RSS MB | x hand-written DataLoader |",
            "|---|---|---:|---:|",
        ]
        for x in r["memory"]:
            out.append(f"| {x['workload']} | {x['contender']} | {_f(x['peak_rss_mb'], '.0f')} | {_f(x['rss_ratio'], '.3f')} |")
        out.append("")
    if r.get("checkpoint"):
        c = r["checkpoint"]
        out += [
            "**checkpoint** (ResNet-18 + AdamW state)",
            "",
            "| metric | value |",
            "|---|---:|",
            f"| checkpoint size | {c['checkpoint_mb']:.0f} MB |",
            f"| CheckpointManager.save (serialise + SHA-256 + atomic write + fsync) | {c['save_s']:.3f} s |",
            f"| of which torch.save to memory / SHA-256 | {c['serialize_s']:.3f} s / {c['sha256_s']:.3f} s |",
            f"| training step, batch {c['measured_batch']} (measured) | {c['step_s_measured']:.3f} s |",
            f"| training step, batch 512 ({'linear estimate' if c['step_time_estimated'] else 'measured'}) | {c['step_s_batch512']:.3f} s |",
            f"| CIFAR-10 epoch at batch 512 ({c['steps_per_epoch']} steps) | {c['epoch_s_batch512']:.1f} s |",
            f"| share of training time, defaults (a checkpoint and a best.pt every 5 minutes) | {100 * c['checkpoint_share']:.3f} % |",
            f"| share of training time, checkpoint.every_epoch=true (one save per epoch) | {100 * c['checkpoint_share_every_epoch']:.3f} % |",
            f"| loop stall with checkpoint.async_write | {c['async_stall_s']:.3f} s |",
            f"| share of training time, defaults with checkpoint.async_write | {100 * c['checkpoint_share_async']:.4f} % |",
            "",
        ]
    if r.get("startup"):
        out += ["**start-up** (wall time, median)", "", "| command | seconds |", "|---|---:|"]
        for x in r["startup"]:
            out.append(f"| `{x['command']}` | {x['seconds']:.3f} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/cpu.json").read_text())))
