"""Device statistics logged with the training metrics: CUDA memory and utilisation, and for language
models the model FLOPs utilisation (MFU).

MFU follows nanoGPT / the PaLM paper: a token costs 6·N FLOPs for the weights (forward and backward)
plus 12·L·d·T for attention (L layers of width d over a window of T tokens); MFU is the FLOPs the
measured tokens/s need, over the GPU's peak dense bf16/fp16 FLOPs. CPU runs log neither.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Peak dense (no sparsity) bf16/fp16 tensor-core FLOP/s per GPU, from the vendors' data sheets. The
# longest name contained in torch.cuda.get_device_name() wins (so "H100 PCIe" before "H100");
# logging.peak_tflops overrides the table (other GPUs, clocks, precisions).
PEAK_FLOPS = {
    "B200": 2250e12,
    "H200": 989e12,
    "H100": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "GH200": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 6000 Ada": 364e12,
    "RTX A6000": 155e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}
_GIB = 1024**3


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of the named GPU (None: unknown and no override)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    matches = [name for name in PEAK_FLOPS if name.lower() in device_name.lower()]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def flops_per_token(n_params: int, layers: int | None, width: int | None, seq_len: int | None) -> float:
    """Training FLOPs per token: 6·N, plus 12·L·d·T for attention when the shape is known."""
    attention = 12 * layers * width * seq_len if layers and width and seq_len else 0
    return 6 * n_params + attention


def model_shape(model: nn.Module, params: dict[str, Any]) -> tuple[int | None, int | None]:
    """(layers, width) from a transformers config or the model's constructor arguments (taktstock's gpt)."""
    cfg = getattr(model, "config", None)
    sources = [vars(cfg) if cfg is not None and hasattr(cfg, "__dict__") else {}, params]
    layers = width = None
    for src in sources:
        layers = layers or next(
            (src[k] for k in ("num_hidden_layers", "n_layer", "depth", "num_layers") if isinstance(src.get(k), int)), None
        )
        width = width or next((src[k] for k in ("hidden_size", "n_embd", "dim", "d_model") if isinstance(src.get(k), int)), None)
    return layers, width


class DeviceStats:
    """`record(throughput)` -> the device/* metrics of one logging interval ({} on CPU)."""

    def __init__(
        self,
        device: torch.device,
        model: nn.Module,
        model_params: dict[str, Any],
        seq_len: int | None,
        language_model: bool,
        world_size: int = 1,
        peak_tflops: float | None = None,
    ) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.world_size = world_size
        self.flops_per_token: float | None = None
        self.peak: float | None = None
        if self.cuda and language_model:
            self.peak = peak_flops(torch.cuda.get_device_name(device), peak_tflops)
            n = sum(p.numel() for p in model.parameters())
            self.flops_per_token = flops_per_token(n, *model_shape(model, model_params), seq_len)
        self._utilization = self.cuda  # turned off at the first failure (no pynvml)

    def record(self, throughput: float) -> dict[str, float]:
        """Memory (GiB, this process's GPU), utilisation (%) and MFU of the interval's `throughput`
        (tokens/s of the whole group for a language model)."""
        if not self.cuda:
            return {}
        out = {
            "device/mem_allocated_gib": round(torch.cuda.memory_allocated(self.device) / _GIB, 3),
            "device/mem_reserved_gib": round(torch.cuda.memory_reserved(self.device) / _GIB, 3),
            "device/mem_peak_gib": round(torch.cuda.max_memory_allocated(self.device) / _GIB, 3),
        }
        if self._utilization:
            try:  # needs pynvml (nvidia-ml-py); without it the key is left out
                out["device/utilization_pct"] = float(torch.cuda.utilization(self.device))
            except Exception:
                self._utilization = False
        if self.flops_per_token and self.peak and throughput > 0:
            out["device/mfu"] = round(self.flops_per_token * throughput / (self.world_size * self.peak), 4)
        return out
