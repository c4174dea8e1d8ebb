"""Image-folder benchmarks: `python -m benchmarks.images [--repeats 5] [--copies 10] [--json FILE]`.

1. Training throughput of one epoch over a folder of 32x32 RGB PNGs (the digits, upscaled): taktstock's
   image dataset (decode in workers, transforms seeded per sample) vs a hand-written
   `torchvision.datasets.ImageFolder` loop, both through `DataLoader(num_workers=2, persistent_workers=True)`
   with the same transforms, model, optimizer and batch size; interleaved rounds, median of paired ratios.
2. Loading throughput (no model) of the memmap pixel cache vs decoding, on the same 32x32 images.
3. Peak RSS of a fixed number of training steps on 1x and `--copies`x as many images (fresh processes),
   for taktstock and the hand-written loop: the main process and the largest DataLoader worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.common import Options, Timed, environment, interleaved, print_table, write_json

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
WORKERS = 2
RSS_STEPS = 60


def _images(root: Path, copies: int) -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    from make_digit_images import write_digits

    folder = root / f"digits32-x{copies}"
    if not (folder / ".complete").is_file():
        write_digits(folder, size=32, copies=copies, rgb=True)
        (folder / ".complete").write_text("")
    return folder


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )


TRAIN_TRANSFORMS = [{"RandomCrop": {"size": 32, "padding": 4}}, "RandomHorizontalFlip"]


def _taktstock_split(folder: Path, work: Path, cache: str) -> Any:
    from taktstock.config.schema import Config
    from taktstock.data.images.prepare import prepare_images

    config = Config.model_validate(
        {
            "data": {
                "source": "imagefolder",
                "path": str(folder),
                "image_size": 32,
                "val_fraction": 0.0,
                "test_fraction": 0.0,
                "cache_dir": str(work / "cache"),
                "image_cache": cache,
                "transforms": {"train": TRAIN_TRANSFORMS},
            }
        }
    )
    return prepare_images(config).split("train")


def _taktstock_loader(split: Any) -> tuple[DataLoader, Any]:
    from taktstock.data.loaders import EpochBatchSampler

    sampler = EpochBatchSampler(len(split), BATCH, seed=0)
    loader = DataLoader(
        split,
        batch_sampler=sampler,
        num_workers=WORKERS,
        persistent_workers=True,
        collate_fn=split.collate,
        generator=torch.Generator().manual_seed(0),
    )
    return loader, sampler


def _imagefolder_loader(folder: Path, mean: list[float], std: list[float]) -> DataLoader:
    """What a user writes by hand: torchvision's ImageFolder (Pillow loader) with the same v2 transforms."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    dataset = ImageFolder(str(folder), transform=transform)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True)


class Trainer:
    """One epoch of a small CNN with AdamW over a loader; returns (seconds, samples)."""

    def __init__(self, loader: DataLoader, sampler: Any = None, train: bool = True) -> None:
        self.loader, self.sampler, self.train, self.epoch = loader, sampler, train, 0
        self.model = _model()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def run(self, max_steps: int | None = None) -> tuple[float, int]:
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        samples = 0
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(self.loader):
            if self.train:
                loss = nn.functional.cross_entropy(self.model(x), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
            samples += len(y)
            if max_steps is not None and step + 1 >= max_steps:
                break
        return time.perf_counter() - t0, samples


def throughput(work: Path, repeats: int) -> dict[str, Any]:
    folder = _images(work, 1)
    decoded = _taktstock_split(folder, work, "none")
    cached = _taktstock_split(folder, work, "memmap")
    mean, std = decoded.settings.mean, decoded.settings.std
    ours = Trainer(*_taktstock_loader(decoded))
    theirs = Trainer(_imagefolder_loader(folder, mean, std))
    train_rows = interleaved([Timed("taktstock", ours.run), Timed("imagefolder", theirs.run)], repeats, baseline="imagefolder")
    load_decode = Trainer(*_taktstock_loader(decoded), train=False)
    load_cache = Trainer(*_taktstock_loader(cached), train=False)
    load_rows = interleaved([Timed("memmap", load_cache.run), Timed("decode", load_decode.run)], repeats, baseline="decode")
    return {"images": len(decoded), "train": train_rows, "load": load_rows}


def _hwm_mib(pid: int | str = "self") -> float:
    """Peak resident set (VmHWM) of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_child(kind: str, copies: int, work: Path) -> dict[str, float]:
    """Train RSS_STEPS steps in this process; peak RSS (MiB) of this process and of its largest worker.

    The peak is reset (Linux clear_refs) after the imports and the dataset set-up, so it measures the
    training loop, not the one-off import peak of torch that would hide any difference.
    """
    import psutil

    torch.set_num_threads(1)
    folder = _images(work, copies)
    if kind == "taktstock":
        split = _taktstock_split(folder, work, "none")
        trainer, images = Trainer(*_taktstock_loader(split)), len(split)
    else:  # no taktstock in this process: constant statistics instead of prepared ones
        loader = _imagefolder_loader(folder, [0.5] * 3, [0.25] * 3)
        trainer, images = Trainer(loader), len(loader.dataset)
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    trainer.run(max_steps=RSS_STEPS)
    workers = [_hwm_mib(c.pid) for c in psutil.Process().children()]
    return {"images": images, "main_mib": _hwm_mib(), "worker_mib": max(workers, default=0.0)}


def peak_rss(work: Path, copies: int) -> list[dict[str, Any]]:
    rows = []
    for kind, k in (("taktstock", 1), ("taktstock", copies), ("imagefolder", 1), ("imagefolder", copies)):
        _images(work, k)  # written outside the measured process
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.images", "--rss-child", kind, "--copies", str(k), "--workdir", str(work)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        rows.append({"contender": kind, "copies": k, **json.loads(out.strip().splitlines()[-1])})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--copies", type=int, default=10, help="the larger image set of the RSS comparison, in copies of the digits")
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/.work/images"))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/images-cpu.json"))
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--only-rss", action="store_true")
    p.add_argument("--rss-child", choices=("taktstock", "imagefolder"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.rss_child:
        print(json.dumps(_rss_child(a.rss_child, a.copies, a.workdir)))
        return
    torch.set_num_threads(1)
    result: dict[str, Any] = {"environment": environment(Options(repeats=a.repeats)), "batch_size": BATCH, "num_workers": WORKERS}
    if not a.only_rss:
        result["throughput"] = throughput(a.workdir, a.repeats)
        cols = [("contender", "contender", ""), ("samples_per_s", "samples/s", ".0f"), ("ratio", "ratio (median of paired)", ".3f")]
        print_table(f"train epoch, {result['throughput']['images']} images 32x32 PNG", result["throughput"]["train"], cols)
        print_table("loading only (no model)", result["throughput"]["load"], cols)
    if not a.skip_rss:
        result["peak_rss"] = peak_rss(a.workdir, a.copies)
        rss_cols = [
            ("contender", "contender", ""),
            ("images", "images", "d"),
            ("main_mib", "main MiB", ".0f"),
            ("worker_mib", "worker MiB", ".0f"),
        ]
        print_table(f"peak RSS, {RSS_STEPS} training steps", result["peak_rss"], rss_cols)
    write_json(a.json, result)
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
