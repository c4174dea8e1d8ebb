"""torchvision ResNet-18 on an image folder: `taktstock train` vs a hand-written loop, one process.

    python -m benchmarks.zoo [--repeats 5] [--copies 1] [--image-size 32] [--device cpu|cuda] [--json FILE]
    python -m benchmarks.zoo --quick            # smoke run: 2 rounds of 4 steps, nothing recorded

The folder is scikit-learn's digits written as RGB PNGs (`scripts/make_digit_images.py`, 1797 images per
copy). Both contenders train `torchvision:resnet18` (no weights, 10 classes, seed 0) with AdamW (lr 1e-3,
no weight decay, the fused kernel as taktstock picks it) at batch 64, reading the folder through
`DataLoader(num_workers=2, persistent_workers=True, pin_memory on CUDA)` with a random horizontal flip and
the same per-channel normalisation: taktstock through its `imagefolder` source (decoded in the workers,
transforms seeded per sample), the hand-written loop through `torchvision.datasets.ImageFolder`, as a user
writes it. On CUDA both use bf16 autocast, channels_last and cuDNN autotuning. taktstock is timed from
its first to its last optimizer step (`benchmarks.timing:FitTimer`), without checkpoints; the loop likewise.
A third contender fine-tunes with the backbone frozen (`model.freeze`, only `fc` trains): its time per
step against full fine-tuning shows that no backbone gradients are computed. Contenders run round-robin
(rotating start), the result is the median of paired per-round ratios to the hand-written loop.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import Options, Timed, environment, interleaved, print_table, write_json
from benchmarks.images import _images
from benchmarks.timing import TimedTrain, timed_sections

BATCH, WORKERS, LR = 64, 2, 1e-3
BASELINE = "hand-written ImageFolder loop"
# Everything but the classifier: a frozen backbone (BatchNorm statistics frozen too).
BACKBONE = ["conv1.*", "bn1.*", "layer*"]


def _config(folder: Path, work: Path, a: argparse.Namespace, freeze: list[str] | None = None) -> dict[str, Any]:
    cuda = a.device == "cuda"
    model: dict[str, Any] = {"name": "torchvision:resnet18"}
    if freeze:
        model["freeze"] = freeze
    return {
        "experiment": {"name": "bench-zoo", "output_dir": str(work / "runs")},
        "seed": 0,
        "data": {
            "source": "imagefolder",
            "path": str(folder),
            "image_size": a.image_size,
            "val_fraction": 0.0,  # the hand-written loop does not validate
            "test_fraction": 0.0,
            "cache_dir": str(work / "cache"),
            "num_workers": WORKERS,
            "persistent_workers": True,
            "transforms": {"train": ["RandomHorizontalFlip"]},
        },
        "model": model,
        "optim": {"name": "adamw", "lr": LR, "weight_decay": 0.0},
        **timed_sections(
            a.steps,
            BATCH,
            log_every_n_steps=50,
            device=a.device,
            precision="bf16" if cuda else "32",
            channels_last=cuda,
            deterministic=not cuda,  # cuDNN autotuning on CUDA, as in the hand-written loop
        ),
    }


class HandWritten:
    """The loop a competent PyTorch user writes around torchvision's ImageFolder and resnet18."""

    def __init__(self, folder: Path, mean: list[float], std: list[float], a: argparse.Namespace) -> None:
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        self.device, self.steps = torch.device(a.device), a.steps
        transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize((a.image_size, a.image_size), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean, std),
            ]
        )
        self.dataset = ImageFolder(str(folder), transform=transform)

    def __call__(self) -> tuple[float, int]:
        from torchvision.models import resnet18

        cuda = self.device.type == "cuda"
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = cuda
        model = resnet18(num_classes=10).to(self.device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=True)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True, pin_memory=cuda
        )
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        model.train()
        steps = samples = 0
        t0 = time.perf_counter()  # as FitTimer: the workers start inside the window for both
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps, samples = steps + 1, samples + BATCH
            if self.steps is not None and steps >= self.steps:
                break
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, samples


def _statistics(folder: Path, work: Path, a: argparse.Namespace) -> tuple[list[float], list[float]]:
    """taktstock's per-channel mean/std of the folder, so both contenders normalise alike."""
    from taktstock.config.loader import validate
    from taktstock.data.images.prepare import prepare_images

    settings = prepare_images(validate(_config(folder, work, a), {}, "<benchmark>")).split("train").settings
    return list(settings.mean), list(settings.std)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--copies", type=int, default=1, help="image folder size in copies of the 1797 digits (default 1)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per round (default: one epoch)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-frozen", action="store_true", help="leave out the frozen-backbone contender")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 4 steps, no warm-up round")
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/.work/zoo"))
    p.add_argument("--json", type=Path, default=None, help="result file (default benchmarks/results/zoo-<device>.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.steps = 2, a.steps or 4
    torch.set_num_threads(a.threads)
    a.workdir.mkdir(parents=True, exist_ok=True)
    folder = _images(a.workdir, a.copies)
    mean, std = _statistics(folder, a.workdir, a)  # prepares (and caches) the folder outside every timing
    # exact=False: without --steps a run is one epoch, and its steps are what both loops count.
    contenders = [
        Timed(BASELINE, HandWritten(folder, mean, std, a)),
        Timed("taktstock torchvision:resnet18", TimedTrain(_config(folder, a.workdir, a), a.workdir / "runs" / "full", BATCH, exact=False)),
    ]
    if not a.no_frozen:
        frozen = TimedTrain(_config(folder, a.workdir, a, freeze=BACKBONE), a.workdir / "runs" / "frozen", BATCH, exact=False)
        contenders.append(Timed("taktstock, frozen backbone (fc trains)", frozen))
    rows = interleaved(contenders, a.repeats, BASELINE, warmup=not a.quick)
    full = next(r for r in rows if r["contender"] == "taktstock torchvision:resnet18")
    for r in rows:
        r["vs_full_finetuning"] = r["samples_per_s"] / full["samples_per_s"]
    images = len(contenders[0].run.dataset)  # type: ignore[attr-defined]
    cols = [
        ("contender", "contender", ""),
        ("samples_per_s", "samples/s", ".1f"),
        ("ratio", "ratio (median of paired)", ".3f"),
        ("vs_full_finetuning", "vs full fine-tuning", ".2f"),
    ]
    steps = f"{a.steps} steps" if a.steps else "one epoch"
    print_table(f"resnet18, {images} images {a.image_size}x{a.image_size}, {steps}, {a.device}, median of {a.repeats} rounds", rows, cols)
    opts = Options(device=a.device, threads=a.threads, repeats=a.repeats, quick=a.quick, workdir=a.workdir)
    result = {"environment": environment(opts), "images": images, "image_size": a.image_size, "batch_size": BATCH, "rows": rows}
    if a.quick:
        print("(smoke run: not recorded)")
        return
    out = a.json or Path(f"benchmarks/results/zoo-{a.device}.json")
    write_json(out, result)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
