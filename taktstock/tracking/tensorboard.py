"""TensorBoard scalars, hparams and optional weight/gradient histograms.

The event files lie in the run directory itself, so `tensorboard --logdir experiments/runs` names
each run after its directory. Hyperparameters go to the HPARAMS tab through the hparams plugin's
summaries, written into the same event stream: no `hparam/*` scalars, no sub-run (which is what
`SummaryWriter.add_hparams` makes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from taktstock.utils.dicts import flatten_dict


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None
        self._hparams: dict[str, Any] = {}

    def start(self, config: dict[str, Any], resume_state: dict[str, Any] | None, step: int) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed run wrote after its last checkpoint: one continuous curve.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if resume_state is not None else None)
        self._hparams = {k: v for k, v in flatten_dict(config).items() if isinstance(v, (int, float, str, bool))}
        if resume_state is None:  # a resumed run keeps the session its first start wrote
            self.writer._get_file_writer().add_summary(hparams_pb(self._hparams, trial_id=self.log_dir.name), 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def log_histograms(self, model: nn.Module, step: int) -> None:
        for name, p in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
            if p.grad is not None:
                self.writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def log_text(self, name: str, text: str, step: int) -> None:
        """Text (markdown) in TensorBoard's TEXT tab, e.g. logging.samples."""
        self.writer.add_text(name, text, step)

    def log_summary(self, final: dict[str, float]) -> None:
        """The HPARAMS tab's columns: every hyperparameter, and as metrics the run's own scalar tags
        (TensorBoard shows their last values), so no single-point scalar is written."""
        from tensorboard.plugins.hparams.summary_v2 import HParam, Metric, hparams_config_pb

        metrics = [Metric(tag) for tag in final if tag.startswith(("val/", "test/"))] or [Metric(tag) for tag in final]
        pb = hparams_config_pb(hparams=[HParam(k) for k in self._hparams], metrics=metrics)
        self.writer._get_file_writer().add_summary(pb, 0)

    def log_run_outputs(self, run: Any, final: dict[str, float]) -> None:
        """End of training: the HPARAMS tab's table with the final validation metrics as columns."""
        if final:
            self.log_summary(final)

    def log_artifact(self, path: Path) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
