"""`taktstock export`: write a run's inference model as ONNX, TorchScript or safetensors, then check it.

Every format takes raw feature rows (the training normalisation is inside the model), or for an index-encoded
table two inputs, `numeric` (float32, encoded) and `categorical` (int64 level indices), and returns
probabilities for classification or values for regression. Each file is reloaded after writing and its
outputs compared with the PyTorch model on a sample batch; a mismatch is an error, not a warning.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from taktstock.config.loader import config_to_yaml
from taktstock.deploy.model import LoadedRun, load_run
from taktstock.errors import UserError
from taktstock.utils.atomic import atomic_write_bytes

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
TOLERANCE = 1e-4


def export(
    run_dir: str | Path, fmt: str, checkpoint: str = "best", out: str | Path | None = None, weights: str | None = None
) -> tuple[Path, float]:
    """Write the model to `out` (default RUN_DIR/export/model.<ext>); returns (path, max abs difference to PyTorch).

    `weights`: ema or raw for a train.ema run (as `evaluate --weights`)."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got '{fmt}'")
    loaded = load_run(run_dir, checkpoint, weights=weights)
    path = Path(out) if out else Path(run_dir) / "export" / f"model{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    x = loaded.example_inputs()
    with torch.no_grad():
        expected = loaded.model(*x)
    diff = {"onnx": _onnx, "torchscript": _torchscript, "safetensors": _safetensors}[fmt](loaded, x, expected, path)
    if diff > TOLERANCE:
        raise UserError(f"export check failed: {path} differs from the PyTorch model by {diff:.3g} (> {TOLERANCE})")
    return path, diff


def _onnx(loaded: LoadedRun, x: tuple[torch.Tensor, ...], expected: torch.Tensor, path: Path) -> float:
    import numpy as np
    import onnxruntime as ort

    tmp = path.with_name(f".{path.name}.tmp")
    # The exporter logs about optional torchvision ops and deprecations that say nothing about this model.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch")  # one dimension shared by every input: they hold the same rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # Several inputs (an index-encoded table's numeric and categorical parts) share the one batch
        # dimension on purpose; the exporter warns that it keeps only one of their identical names.
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
        torch.onnx.export(
            loaded.model,
            x,
            str(tmp),
            input_names=loaded.input_names,
            output_names=["y"],
            dynamic_shapes=tuple({0: batch} for _ in x),
            external_data=False,  # one self-contained file
            verbose=False,
        )
    tmp.replace(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["y"], {n: t.numpy() for n, t in zip(loaded.input_names, x, strict=True)})[0]
    # A different batch size proves the batch dimension really is dynamic.
    session.run(["y"], {n: t[:3].numpy() for n, t in zip(loaded.input_names, x, strict=True)})
    return float(np.abs(got - expected.numpy()).max())


def _torchscript(loaded: LoadedRun, x: tuple[torch.Tensor, ...], expected: torch.Tensor, path: Path) -> float:
    import io

    # PyTorch 2.14 deprecates TorchScript with a FutureWarning on each of trace/save/load: four lines of
    # noise on every export that the user asked for by name (docs/pipelines.md says onnx is preferred).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(loaded.model, x, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files=_metadata(loaded))
        atomic_write_bytes(path, buffer.getvalue())
        reloaded = torch.jit.load(str(path))
        with torch.no_grad():
            return float((reloaded(*x) - expected).abs().max())


def _safetensors(loaded: LoadedRun, x: tuple[torch.Tensor, ...], expected: torch.Tensor, path: Path) -> float:
    from safetensors.torch import load_file, save

    state = {k: v.detach().cpu().clone().contiguous() for k, v in loaded.model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata=_metadata(loaded)))
    reloaded = load_file(str(path))
    if reloaded.keys() != state.keys() or not all(torch.equal(reloaded[k], v) for k, v in state.items()):
        raise UserError(f"export check failed: {path} does not hold the model's exact weights")
    # Rebuild from the file alone: the weights must reproduce the outputs exactly.
    fresh = load_run_like(loaded)
    fresh.load_state_dict(reloaded)
    with torch.no_grad():
        return float((fresh(*x) - expected).abs().max())


def load_run_like(loaded: LoadedRun) -> torch.nn.Module:
    """A fresh inference model of the same architecture (random weights) to load an exported state into."""
    import copy

    fresh = copy.deepcopy(loaded.model)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    return fresh


def _metadata(loaded: LoadedRun) -> dict[str, str]:
    """Config and preprocessing travel inside the file (safetensors metadata / TorchScript extra files)."""
    return {"taktstock.config": config_to_yaml(loaded.config), "taktstock.preprocessing": json.dumps(loaded.preprocessing)}
