"""The typed experiment schema: every option, its default and a one-line description.

The schema *is* the documentation: `taktstock config docs` and `docs/config.md` are
generated from the field descriptions below, so they cannot drift from the code.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

# YAML 1.1 (PyYAML) reads `off`/`on`/`yes`/`no` as booleans and `32` as an int; a choice field
# documented as `progress: off` or `precision: 32` must accept what the YAML parser made of it.
_TRUE_WORDS, _FALSE_WORDS = ("on", "yes", "true"), ("off", "no", "false")


def _literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


def _coerce_choice(value: Any, choices: tuple[Any, ...]) -> Any:
    """Map a YAML-1.1-typed scalar back to the string choice it was written as (True -> 'on', 32 -> '32')."""
    if value in choices and type(value) is str:
        return value
    if isinstance(value, bool):
        words = _TRUE_WORDS if value else _FALSE_WORDS
        return next((c for c in choices if isinstance(c, str) and c.lower() in words), value)
    if isinstance(value, int | float) and str(value) in choices:
        return str(value)
    return value


def coerce_literals(model: type[BaseModel], data: Any) -> Any:
    """Rewrite the choice (Literal) fields of a raw section mapping; anything else passes unchanged."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in model.model_fields.items():
        choices = _literal_choices(field.annotation)
        if choices and name in out:
            out[name] = _coerce_choice(out[name], choices)
    return out


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _choices_as_written(cls, data: Any) -> Any:
        return coerce_literals(cls, data)


class ExperimentConfig(Section):
    name: str = Field("experiment", description="Experiment name; prefixes run directories and tracker runs.", min_length=1)
    output_dir: str = Field("experiments/runs", description="Directory under which run directories are created.")
    tags: dict[str, str] = Field(default_factory=dict, description="Free-form tags recorded with the run.")


class DataConfig(Section):
    source: str = Field(
        "digits",
        description="Data source: digits, wine, breast_cancer, iris, diabetes, csv (also .tsv, .csv.gz), parquet, npz, "
        "synthetic, imagefolder, image_csv, text (labelled texts), corpus (text files for language modelling), "
        "mds (shards written by `taktstock prepare --to-mds`), or an import path 'module:Class' of a user dataset.",
    )
    path: str | None = Field(
        None,
        description="Input file for csv/parquet/npz/image_csv sources, image folder for imagefolder; mds: the shards' "
        "directory, or the local cache of data.remote.",
    )
    remote: str | None = Field(
        None,
        description="mds: remote location of the shards (s3://bucket/prefix; endpoint and credentials from S3_ENDPOINT_URL "
        "and the AWS environment variables), downloaded shard by shard into data.path on first use.",
    )
    target: str | None = Field(None, description="Target column (csv/parquet, image_csv) or array name (npz, default 'y').")
    shuffle_block: int | None = Field(
        None,
        ge=1,
        description="mds: shard-blocked training order: each epoch permutes the shards, groups them into blocks of this "
        "many and shuffles the samples within each block, so only about two blocks of shards are needed at a time "
        "(default: one permutation over all samples).",
    )
    cache_limit: ByteSize | None = Field(
        None,
        description="mds with data.remote: most bytes the local cache may hold (an int or a size like '2gb', '512MiB'); "
        "least recently used shards outside the current and next block are evicted. Requires data.shuffle_block "
        "(default: no limit, every downloaded shard is kept).",
    )
    features: list[str] | None = Field(
        None, description="Feature columns (csv/parquet); default: all columns except the target and data.drop."
    )
    categorical: list[str] = Field(
        default_factory=list, description="Table columns to treat as categorical (default: text columns are categorical)."
    )
    numeric: list[str] = Field(default_factory=list, description="Table columns to treat as numeric (e.g. numbers stored as text).")
    drop: list[str] = Field(default_factory=list, description="Table columns not used as features (ids, leaks).")
    categorical_encoding: Literal["onehot", "index"] = Field(
        "onehot",
        description="Tables: categorical columns as one-hot float columns (any model), or as level indices for the "
        "embeddings of model.name=tabular.",
    )
    min_frequency: int | float | None = Field(
        None,
        description="Tables: levels seen in fewer training rows (an int) or a smaller fraction of them (a float < 1) "
        "merge into one 'rare' level.",
    )
    max_categories: int = Field(
        200, ge=2, description="Tables: a categorical column with more levels than this is an error (likely an id column)."
    )
    numeric_impute: Literal["median", "mean", "most_frequent"] = Field(
        "median",
        description="Tables: fill value of missing numeric cells (fitted on the training split; a missing-indicator column is added).",
    )
    datetime: Literal["parts", "drop"] = Field(
        "parts", description="Tables: date columns become year, month, day of week (and hour where times occur), or are dropped."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for a user dataset class or synthetic data.")
    task: Literal["auto", "classification", "regression", "language_modeling"] = Field(
        "auto", description="Task type; 'auto' follows from the source (corpus: language_modeling), else from the loss."
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction of samples held out for validation.")
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction of samples held out for testing.")
    stratify: bool = Field(True, description="Stratify the split by class for classification data.")
    split_by: Literal["fractions", "dataset"] = Field(
        "fractions",
        description="A user Dataset whose constructor takes `split` (built once per split with 'train', 'val', 'test'): "
        "'fractions' splits its items by val_fraction/test_fraction (every split object serves the same items); "
        "'dataset' uses each split object whole (the dataset reads its own split files; the fractions do not apply).",
    )
    normalize: Literal["standard", "minmax", "global", "none"] = Field(
        "standard",
        description="Normalisation fitted on the training split only: per-feature standard, minmax, global, or none "
        "(images: per-channel statistics of a bounded sample).",
    )
    cache_dir: str = Field("data/prepared", description="Where prepared (split + normalised) arrays are cached.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    persistent_workers: bool = Field(
        True, description="Keep DataLoader workers (training and validation) alive between epochs (when num_workers > 0)."
    )
    prefetch_factor: int = Field(2, ge=1, description="Batches prefetched per worker.")
    in_memory: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Batch directly from in-memory tensors (no per-sample collate). 'auto' uses it when the data fits "
        "memory_budget_mb and num_workers is 0.",
    )
    memory_budget_mb: float = Field(1024.0, gt=0, description="Largest prepared dataset used in-memory by in_memory='auto'.")
    on_device: bool = Field(False, description="Keep in-memory data on the accelerator (GPU) instead of host memory.")
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(), description="Training-time augmentation.")
    # Text and language modelling (data.source: text | corpus); see docs/data.md.
    text_field: str = Field("text", description="text: the column/field holding the text.")
    text_pair_field: str | None = Field(None, description="text: optional second text field (sentence pairs).")
    tokenizer: str | TokenizerTrainConfig = Field(
        default_factory=lambda: TokenizerTrainConfig(),
        description="text/corpus: a tokenizer.json or Hugging Face tokenizer directory, or {train: bpe|wordpiece|unigram|byte, "
        "vocab_size: N} to train one on the training split at prepare time.",
    )
    max_length: int = Field(512, ge=1, description="text: truncate tokenised samples (pairs together) to this many tokens.")
    pad_to_multiple_of: int | None = Field(None, ge=1, description="text: pad batches to a multiple of this (e.g. 8 for tensor cores).")
    block_size: int = Field(256, ge=1, description="corpus: tokens per language-modelling window.")
    # Image sources (imagefolder, image_csv): see docs/data.md.
    image_column: str = Field("path", description="image_csv: column of image paths (relative to the manifest's folder).")
    image_size: int | list[int] | None = Field(
        None, description="Images: height and width after resizing, an int or [h, w]; default: the size of the first image."
    )
    channels: Literal[1, 3] = Field(3, description="Images: 1 (grayscale) or 3 (RGB) channels after decoding.")
    transforms: TransformsConfig = Field(
        default_factory=lambda: TransformsConfig(), description="Images: torchvision.transforms.v2 pipelines per phase."
    )
    bad_samples: Literal["error", "skip"] = Field(
        "error", description="Images: an unreadable or truncated file stops with its path (error) or is left out with a warning (skip)."
    )
    image_cache: Literal["none", "memmap", "auto"] = Field(
        "none",
        description="Images: keep resized uint8 pixels in a memory-mapped file so epochs need no decoding; "
        "'auto' uses it when it fits memory_budget_mb.",
    )

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: int | list[int] | None) -> int | list[int] | None:
        sizes = [v] if isinstance(v, int) else (v or [])
        if (isinstance(v, list) and len(v) != 2) or any(s < 1 for s in sizes):
            raise ValueError("must be a positive int or [height, width]")
        return v

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self

    @model_validator(mode="after")
    def _sharded_only(self) -> DataConfig:
        for name in ("shuffle_block", "cache_limit"):
            if getattr(self, name) is not None and self.source != "mds":
                raise ValueError(f"{name} applies to data.source=mds only (got source={self.source})")
        return self

    @field_validator("cache_limit", mode="before")
    @classmethod
    def _size_text(cls, v: Any) -> Any:
        # ByteSize takes '2gb' and '2GiB' but not a bool, which YAML makes of some words.
        if isinstance(v, bool):
            raise ValueError("must be a number of bytes or a size like '2gb'")
        return v

    @field_validator("min_frequency")
    @classmethod
    def _min_frequency(cls, v: int | float | None) -> int | float | None:
        if v is not None and not (isinstance(v, int) and v >= 1) and not (isinstance(v, float) and 0 < v < 1):
            raise ValueError("must be a count >= 1 or a fraction between 0 and 1")
        return v


TransformItem = str | dict[str, dict[str, Any] | None]


class TransformsConfig(Section):
    train: list[TransformItem] = Field(
        default_factory=list,
        description="Training transforms: torchvision.transforms.v2 class names or one-key mappings {Name: {kwargs}}; "
        "resize to image_size, float conversion and normalisation are added unless listed.",
    )
    eval: list[TransformItem] = Field(default_factory=list, description="Validation, test and predict transforms (same form).")

    @field_validator("train", "eval")
    @classmethod
    def _one_key(cls, items: list[TransformItem]) -> list[TransformItem]:
        for i, item in enumerate(items):
            if isinstance(item, dict) and len(item) != 1:
                raise ValueError(f"item {i} must be a name or a mapping with one key {{Name: {{kwargs}}}}, got {sorted(item)}")
        return items


class AugmentConfig(Section):
    shift: int = Field(0, ge=0, description="Random translation of images by up to this many pixels (zero padded).")
    hflip: bool = Field(False, description="Random horizontal flip of images.")
    noise_std: float = Field(0.0, ge=0.0, description="Gaussian noise added to inputs (after normalisation).")


class TokenizerTrainConfig(Section):
    train: Literal["bpe", "wordpiece", "unigram", "byte"] = Field(
        "bpe", description="Tokenizer model trained on the training split: bpe, wordpiece, unigram or byte-level BPE."
    )
    vocab_size: int = Field(8192, ge=64, le=1 << 31, description="Vocabulary size, special tokens included.")


class ModelConfig(BaseModel):
    """`name` picks the model; every other key is a constructor argument of that model."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field(
        "mlp",
        description="Registered model name (mlp, cnn, resnet, tabular, transformer, gpt), a model from the ecosystem "
        "(torchvision:<name>, timm:<name>, hf:<directory or cached id>) or an import path 'module:Class'. "
        "`taktstock models` lists them.",
    )
    init: Literal["default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "orthogonal"] = Field(
        "default", description="Weight initialisation of Linear/Conv layers (biases are zeroed unless 'default')."
    )
    # -- fine-tuning (models/weights.py, models/finetune.py) --
    weights: str | None = Field(
        None,
        description="Initial weights: a .safetensors or .pt state dict, or a taktstock run directory (its best.safetensors); "
        "loaded with weights_only, never downloaded.",
    )
    weights_strict: bool = Field(
        True, description="Every weight must match the model; false loads what matches by name and shape and lists the rest."
    )
    pretrained: bool = Field(
        False,
        description="torchvision/timm: start from the architecture's pretrained weights, found only in the local cache "
        "(TORCH_HOME, the Hugging Face cache); the head and a 1-channel first conv are adapted.",
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="Glob patterns of parameter names to freeze (requires_grad=False); frozen normalisation layers stay in eval mode.",
    )
    unfreeze_at_epoch: int | None = Field(
        None, ge=0, description="Unfreeze the model.freeze parameters from this epoch on (gradual unfreezing)."
    )
    hf_config: dict[str, Any] | None = Field(
        None, description="hf:: build a randomly initialised model from this Hugging Face config (model_type plus its fields)."
    )
    activation_checkpointing: list[str] = Field(
        default_factory=list,
        description="Glob patterns of submodule names (e.g. 'blocks.*') whose activations are recomputed in the backward "
        "pass instead of stored (torch.utils.checkpoint, non-reentrant): less memory, more compute.",
    )

    @model_validator(mode="before")
    @classmethod
    def _choices_as_written(cls, data: Any) -> Any:
        return coerce_literals(cls, data)

    def params(self) -> dict[str, Any]:
        """Constructor keyword arguments (everything except the fields above)."""
        return dict(self.model_extra or {})


class ParamGroupConfig(Section):
    params: str | list[str] = Field(..., description="Glob pattern(s) of parameter names in this group, e.g. 'head.*'.")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="Name in the logs (lr/<name>); default: the patterns without glob characters."
    )
    lr: float | None = Field(None, gt=0, description="Learning rate of the group (default optim.lr).")
    weight_decay: float | None = Field(None, ge=0, description="Weight decay of the group (default optim.weight_decay).")


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field("adamw", description="Any torch.optim optimizer by name (adam, adamw, sgd, rmsprop, ...).")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    fused: bool | None = Field(
        None,
        description="One fused kernel for all parameters. Default: on where torch has one for this optimizer and "
        "device (Adam, AdamW, SGD, Adagrad on CPU and CUDA), unless foreach/capturable/differentiable is set; "
        "false keeps torch's default implementation.",
    )
    # -- parameter groups (training/param_groups.py) --
    param_groups: list[ParamGroupConfig] = Field(
        default_factory=list,
        description="Parameter groups {params: glob(s), lr, weight_decay, name}; first match wins, the rest form the default group.",
    )
    no_decay: list[str] | None = Field(
        None, description="Glob patterns of parameters without weight decay; default: biases and normalisation weights; [] decays all."
    )
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: layer k of L gets lr * layer_decay**(L-k) (ViT, ConvNeXt, BERT, timm models).",
    )

    def kwargs(self) -> dict[str, Any]:
        """Extra optimizer keyword arguments (momentum, betas, ...)."""
        return dict(self.model_extra or {})


class SchedulerConfig(Section):
    name: Literal["none", "step", "cosine", "onecycle", "warmup_cosine", "plateau"] = Field(
        "none", description="Learning-rate schedule; all but 'plateau' advance once per optimizer step."
    )
    step_size: int = Field(100, ge=1, description="step: optimizer steps between decays.")
    gamma: float = Field(0.1, gt=0, description="step/plateau: decay factor.")
    warmup_steps: int = Field(0, ge=0, description="warmup_cosine: linear warm-up steps.")
    min_lr: float = Field(0.0, ge=0, description="cosine/warmup_cosine/plateau: lowest learning rate.")
    max_lr: float | None = Field(None, description="onecycle: peak learning rate (default optim.lr).")
    patience: int = Field(5, ge=0, description="plateau: validations without improvement before decaying.")


class LossConfig(Section):
    name: str = Field(
        "cross_entropy",
        description="cross_entropy, mse, l1, bce_with_logits, or an import path 'module:callable' returning a loss module.",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross_entropy: label smoothing.")
    class_weights: list[float] | None = Field(None, description="cross_entropy: per-class weights.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for a custom loss.")


class EmaConfig(Section):
    decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per update: ema = decay * ema + (1 - decay) * weights.")
    every_n_steps: int = Field(1, ge=1, description="Update the EMA every N optimizer steps.")


class ProfileConfig(Section):
    start_step: int = Field(5, ge=1, description="First optimizer step profiled (1-based; skip the slow first steps).")
    steps: int = Field(3, ge=1, le=1000, description="Optimizer steps in the profiled window.")
    memory: bool = Field(
        False,
        description="Record memory: tensor allocations in the profile and, on CUDA, a memory snapshot "
        "(RUN_DIR/profile/memory_snapshot.pickle for pytorch.org/memory_viz).",
    )


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, description="Number of epochs.")
    max_steps: int | None = Field(None, ge=1, description="Optional cap on optimizer steps (stops early when reached).")
    batch_size: int = Field(64, ge=1, description="Global batch size (split across processes in distributed runs).")
    eval_batch_size: int | None = Field(None, ge=1, description="Batch size for validation/test (default: batch_size).")
    accumulate_grad_batches: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    grad_clip_norm: float | None = Field(None, gt=0, description="Clip the global gradient norm to this value.")
    precision: Literal["32", "bf16", "fp16"] = Field(
        "32", description="Numeric precision: 32, bf16 autocast, fp16 autocast with grad scaling."
    )
    compile: bool = Field(False, description="Wrap the model in torch.compile.")
    device: str = Field("auto", description="Device: auto (cuda if available, else cpu), cpu, cuda, cuda:N.")
    deterministic: bool = Field(True, description="Use deterministic algorithms where PyTorch offers them.")
    val_every_n_steps: int | None = Field(None, ge=1, description="Validate every N optimizer steps in addition to every epoch end.")
    log_every_n_steps: int = Field(10, ge=1, description="Log training metrics every N optimizer steps.")
    nan_policy: Literal["stop", "skip"] = Field("stop", description="On a NaN/Inf loss: stop with an error, or skip the batch.")
    step_fn: str | None = Field(None, description="Import path 'module:function' of a custom training step (batch -> loss).")
    callbacks: list[str] = Field(default_factory=list, description="Import paths 'module:Class' of user callbacks.")
    channels_last: bool = Field(False, description="Use channels_last memory format for conv nets (on GPU).")
    ema: EmaConfig | None = Field(
        None, description="Exponential moving average of the weights: validated, checkpointed and exported as best.safetensors."
    )
    profile: ProfileConfig | None = Field(
        None,
        description="A torch.profiler window: a trace in RUN_DIR/profile/ (TensorBoard, Perfetto) and the top ops "
        "in the summary; null: off.",
    )
    limit_train_batches: int | None = Field(None, ge=1, description="Debugging: train on the first N batches of each epoch only.")
    limit_val_batches: int | None = Field(None, ge=1, description="Debugging: validate on the first N validation batches only.")
    overfit_batches: int | None = Field(
        None,
        ge=1,
        description="Debugging: train and validate on the same first N training batches every epoch; a working model drives the loss to ~0.",
    )

    @model_validator(mode="after")
    def _one_batch_limit(self) -> TrainConfig:
        if self.overfit_batches is not None and self.limit_train_batches is not None:
            raise ValueError("train.overfit_batches and train.limit_train_batches exclude each other (overfit_batches fixes the batches)")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "mps") and not v.startswith("cuda:"):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v


class MetricsConfig(Section):
    monitor: str = Field("val/loss", description="Metric that decides the best model and early stopping, e.g. val/acc.")
    mode: Literal["min", "max"] = Field(
        "min",
        description="Whether a lower or higher monitored value is better; default: max for acc, f1, precision, recall, "
        "r2, auroc, iou, dice, jaccard metrics, else min.",
    )
    extra: list[str] = Field(default_factory=list, description="Import paths 'module:Class' of extra torchmetrics Metric classes.")

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        # `monitor: val/acc` without a mode must not keep the *worst* model as the best one.
        if isinstance(data, dict) and data.get("mode") is None:
            name = str(data.get("monitor", "val/loss")).rpartition("/")[2].lower()
            higher_is_better = any(k in name for k in ("acc", "f1", "precision", "recall", "r2", "auroc", "iou", "dice", "jaccard"))
            data = {**data, "mode": "max" if higher_is_better else "min"}
        return data


class CheckpointConfig(Section):
    every_n_minutes: float | None = Field(
        5.0,
        gt=0,
        description="Save a checkpoint at the first step boundary after this many minutes since the last one "
        "(rank 0's clock). The end of training and preemption are always saved.",
    )
    every_n_steps: int | None = Field(None, ge=1, description="Also save every N optimizer steps.")
    every_epoch: bool = Field(False, description="Also save at the end of every epoch.")
    keep_last: int = Field(3, ge=1, description="How many periodic checkpoints stay on disk.")
    save_best: bool = Field(
        True, description="Keep the best checkpoint by the monitored metric (held in memory, written with the next checkpoint)."
    )
    async_write: bool = Field(
        False,
        description="Write checkpoints on a background thread: training waits only for a host copy of the state, "
        "not for serialising, hashing and fsync (same files; a write error stops the run at the next checkpoint or the end).",
    )


class EarlyStoppingConfig(Section):
    enabled: bool = Field(False, description="Stop when the monitored metric stops improving.")
    patience: int = Field(5, ge=1, description="Validations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class MlflowConfig(Section):
    enabled: bool = Field(False, description="Log to MLflow.")
    tracking_uri: str | None = Field(None, description="Tracking URI; default: embedded SQLite at experiments/mlflow.db.")
    experiment: str | None = Field(None, description="MLflow experiment name (default: experiment.name).")
    register_model: bool = Field(False, description="Register the best model in the MLflow Model Registry.")
    log_model: bool = Field(True, description="Log the best model as an MLflow PyTorch model at the end of training.")
    parent_run_id: str | None = Field(
        None, description="Create the run as a child of this MLflow run (tag mlflow.parentRunId), e.g. the parent run of a sweep."
    )
    system_metrics: bool = Field(
        True, description="Record CPU, memory, disk, network and (with pynvml) GPU use in the run's System metrics (needs psutil)."
    )
    system_metrics_interval_s: float = Field(10.0, gt=0, description="Seconds between system-metrics samples.")


class WandbConfig(Section):
    enabled: bool = Field(False, description="Log to Weights & Biases.")
    project: str | None = Field(None, description="W&B project (default: experiment.name).")
    entity: str | None = Field(None, description="W&B entity (user or team).")
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when an API key is configured, else offline."
    )


class SamplesConfig(Section):
    prompts: list[str] = Field(..., min_length=1, description="Prompts continued at each sampled validation ('' starts a new document).")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens generated per prompt.")
    every_n_validations: int = Field(1, ge=1, description="Sample at every N-th validation.")
    temperature: float = Field(0.8, ge=0.0, description="Sampling temperature; 0 is greedy.")
    top_k: int | None = Field(50, ge=1, description="Sample from the k most likely tokens only; null: from all.")
    seed: int = Field(0, description="Seed of the sampling generator (prompt i uses seed + i); never the training RNG.")


class LoggingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files to RUN_DIR/tensorboard.")
    histogram_every_n_steps: int | None = Field(None, ge=1, description="Log weight and gradient histograms to TensorBoard every N steps.")
    progress: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Console progress. auto: a progress bar on a terminal; without one (a batch job's log) one plain line per "
        "validation and every logging.progress_every_minutes, with step, epoch, metrics, throughput and ETA. "
        "on: the bar even without a terminal. off: nothing until the summary.",
    )
    progress_every_minutes: float = Field(
        5.0, gt=0, description="Without a terminal (logging.progress: auto): a plain training line at most this often, between validations."
    )
    plots: bool = Field(True, description="Write learning-curve PNGs at the end of training.")
    device_stats: bool = Field(
        True,
        description="CUDA: log device/mem_allocated_gib, mem_reserved_gib, mem_peak_gib, utilization_pct (with pynvml) and, "
        "for language models, device/mfu (model FLOPs utilisation) with the training metrics; CPU runs log none.",
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="The GPU's peak TFLOP/s for device/mfu; null: from a table of known GPUs by name (no MFU if unknown)."
    )
    fail_soft: bool = Field(
        False, description="Continue without a tracking backend that cannot be reached at start (default: exit with an error)."
    )
    mlflow: MlflowConfig = Field(default_factory=lambda: MlflowConfig(), description="MLflow tracking.")
    wandb: WandbConfig = Field(default_factory=lambda: WandbConfig(), description="Weights & Biases tracking.")
    samples: SamplesConfig | None = Field(
        None,
        description="Language modelling: text continuations of fixed prompts at validation, logged to TensorBoard, "
        "MLflow and RUN_DIR/samples.jsonl; null: off.",
    )


class DistributedConfig(Section):
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="Process-group backend; auto: nccl on CUDA, gloo on CPU.")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="DistributedDataParallel or FSDP2 fully_shard.")
    sync_batchnorm: bool = Field(False, description="Convert BatchNorm layers to SyncBatchNorm.")
    timeout_s: int = Field(300, ge=1, description="Collective timeout in seconds.")


class TuneParam(Section):
    type: Literal["float", "int", "categorical"] = Field(..., description="Kind of search dimension.")
    low: float | None = Field(None, description="Lower bound (float/int).")
    high: float | None = Field(None, description="Upper bound (float/int).")
    log: bool = Field(False, description="Sample on a log scale.")
    step: float | None = Field(None, description="Step between values (int/float).")
    choices: list[Any] | None = Field(None, description="Values of a categorical dimension.")


class TuneConfig(Section):
    space: dict[str, TuneParam] = Field(default_factory=dict, description="Search space: dotted config key -> dimension.")
    trials: int = Field(20, ge=1, description="Number of trials.")
    sampler: Literal["tpe", "random", "grid", "cmaes"] = Field("tpe", description="Optuna sampler.")
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = Field("median", description="Trial pruner.")
    startup_trials: int = Field(5, ge=0, description="Trials run before pruning/TPE starts.")
    warmup_epochs: int = Field(1, ge=0, description="Epochs of a trial before it can be pruned.")
    timeout_s: float | None = Field(None, gt=0, description="Stop starting new trials after this many seconds.")


class PipelineConfig(Section):
    schedule: str | None = Field(None, description="Airflow schedule (cron or preset like @daily); none: manual.")
    retries: int = Field(1, ge=0, description="Airflow task retries.")
    retry_delay_s: int = Field(60, ge=0, description="Seconds between Airflow task retries.")
    start_date: str = Field("2026-01-01", description="Airflow DAG start date (YYYY-MM-DD).")
    run_dir: str | None = Field(None, description="Stable run directory used by pipeline stages (default experiments/pipeline/<name>).")
    promote_metric: str | None = Field(None, description="Test metric compared on promotion (default: metrics.monitor with val/ -> test/).")


class Config(Section):
    """A whole experiment."""

    experiment: ExperimentConfig = Field(default_factory=lambda: ExperimentConfig(), description="Naming and output location.")
    plugins: list[str] = Field(
        default_factory=list,
        description="Modules of your project imported before the config is resolved, e.g. models.my_net, "
        "so their @register_model/@register_source decorators run.",
    )
    seed: int = Field(0, ge=0, description="Seed for splits, initialisation, shuffling, dropout and augmentation.")
    data: DataConfig = Field(default_factory=lambda: DataConfig(), description="Data source, split, preprocessing and loading.")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(), description="Model name, initialisation and constructor arguments.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(), description="Optimizer.")
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig(), description="Learning-rate schedule.")
    loss: LossConfig = Field(default_factory=lambda: LossConfig(), description="Loss function.")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(), description="Training loop.")
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig(), description="Monitored metric.")
    checkpoint: CheckpointConfig = Field(default_factory=lambda: CheckpointConfig(), description="Checkpointing.")
    early_stopping: EarlyStoppingConfig = Field(default_factory=lambda: EarlyStoppingConfig(), description="Early stopping.")
    logging: LoggingConfig = Field(default_factory=lambda: LoggingConfig(), description="Logging and tracking.")
    distributed: DistributedConfig = Field(default_factory=lambda: DistributedConfig(), description="Multi-process training.")
    tune: TuneConfig = Field(default_factory=lambda: TuneConfig(), description="Hyperparameter search.")
    pipeline: PipelineConfig = Field(default_factory=lambda: PipelineConfig(), description="DVC/Airflow pipelines.")

    @property
    def task(self) -> Literal["classification", "regression", "language_modeling"]:
        """Explicit in data.task, else the task a registered source declares (corpus), else implied by the loss."""
        if self.data.task != "auto":
            return self.data.task
        from taktstock.registry import LOSSES, SOURCES

        source = SOURCES.find(self.data.source) if ":" not in self.data.source else None
        if source is not None and source.meta.get("task") == "language_modeling":
            return "language_modeling"

        entry = LOSSES.find(self.loss.name)  # a user loss by import path counts as classification
        return "regression" if entry is not None and entry.meta["task"] == "regression" else "classification"


TransformsConfig.model_rebuild()
DataConfig.model_rebuild()
