"""`logging.samples`: continuations of fixed prompts at validation, logged as text (language models).

Sampling must not change training: it reads no global RNG (each prompt draws from its own seeded
`torch.Generator`, see `training/sampling.py`), runs the plain module (not the compiled or DDP
wrapper, so growing prompt lengths trigger no recompiles) in eval mode under no_grad, and puts the
module back in the mode it found. Every rank samples, so an FSDP model's all-gathers stay matched;
rank 0 writes RUN_DIR/samples.jsonl (one line per prompt) and sends the text to the trackers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taktstock.config.schema import Config, SamplesConfig
from taktstock.run_dir import RunDir
from taktstock.training.sampling import complete
from taktstock.utils.atomic import atomic_write_text


class SampleLogger:
    """A trainer callback: at every `every_n_validations`-th validation, continue each prompt."""

    def __init__(self, settings: SamplesConfig, tokenizer: Any, block_size: int, eos_id: int | None, path: Path, is_main: bool) -> None:
        self.settings, self.tokenizer, self.block_size, self.eos_id = settings, tokenizer, block_size, eos_id
        self.path, self.is_main = path, is_main
        self.validations = 0  # checkpointed: a resumed run samples at the same validations

    def state_dict(self) -> dict[str, int]:
        return {"validations": self.validations}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.validations = int(state["validations"])

    def on_train_start(self, trainer: Any) -> None:
        # As metrics.jsonl: a resumed run drops what the killed one sampled after its checkpoint.
        if self.is_main and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= trainer.state.step]
            atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.validations += 1
        if self.validations % self.settings.every_n_validations:
            return
        p, step = trainer.p, trainer.state.step
        samples = self.sample(p.ema.module if p.ema is not None else p.model, p.autocast)
        if not self.is_main:
            return
        with self.path.open("a") as f:
            for prompt, text in zip(self.settings.prompts, samples, strict=True):
                f.write(json.dumps({"step": step, "epoch": trainer.state.epoch, "prompt": prompt, "text": text}) + "\n")
        p.trackers.call("log_text", "samples", _as_text(self.settings.prompts, samples), step)

    def sample(self, model: Any, autocast: Any) -> list[str]:
        """The continuation of every prompt (prompt i with seed + i), the module's train/eval mode restored."""
        s, was_training = self.settings, model.training
        model.eval()
        try:
            with autocast():
                return [
                    complete(
                        model, self.tokenizer, prompt, s.max_new_tokens, self.block_size, s.temperature, s.top_k, s.seed + i, self.eos_id
                    )
                    for i, prompt in enumerate(s.prompts)
                ]
        finally:
            model.train(was_training)


def sample_loggers(config: Config, data: Any, run: RunDir, is_main: bool) -> list[SampleLogger]:
    """The run's sample logger as a callback list: empty unless logging.samples is set."""
    settings = config.logging.samples
    if settings is None:
        return []
    from taktstock.data.text.tokenizer import load_tokenizer

    prep = data.preprocessing()  # the corpus source (config validation allows no other)
    return [SampleLogger(settings, load_tokenizer(data.tokenizer_path), int(prep["block_size"]), prep.get("eos_id"), run.samples, is_main)]


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a line cut short by a kill: dropped


def _as_text(prompts: list[str], samples: list[str]) -> str:
    """Markdown for TensorBoard's text tab and MLflow's artifact view: each prompt, then its text as a code block."""
    blocks = []
    for prompt, text in zip(prompts, samples, strict=True):
        body = "\n".join(f"    {line}" for line in text.splitlines() or [""])
        blocks.append(f"**{prompt or '(new document)'}**\n\n{body}")
    return "\n\n".join(blocks)
