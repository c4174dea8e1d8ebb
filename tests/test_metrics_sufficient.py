"""The built-in epoch metrics (counts and sums on the device) against torchmetrics 1.9 and scikit-learn.

torchmetrics is the oracle: runs logged these numbers through its classes until the built-in metrics
replaced them. The only intended difference is precision: float64 sums here, float32 states there, hence
the 1e-6 relative tolerance. Plus one deliberate one: R2 of fewer than two samples is nan, not an exception.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchmetrics
from sklearn import metrics as skm
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr

from taktstock.config.loader import validate
from taktstock.metrics import sufficient
from taktstock.metrics.collection import EpochMetrics, class_scores
from tests.conftest import cli_env, tiny_config, write_config

REL = 1e-6


def _config(**sections: object):
    return validate(dict(sections), {}, "test")


def _batches(n: int, gen: torch.Generator) -> list[slice]:
    """Uneven batch boundaries over n samples (a last short batch included)."""
    cuts = sorted(set(torch.randint(1, n, (4,), generator=gen).tolist()))
    bounds = [0, *cuts, n]
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _oracle(num_classes: int) -> torchmetrics.MetricCollection:
    common = {"num_classes": num_classes, "validate_args": False}
    return torchmetrics.MetricCollection(
        {
            "acc": tmc.MulticlassAccuracy(average="micro", **common),
            "f1": tmc.MulticlassF1Score(average="macro", **common),
            "precision": tmc.MulticlassPrecision(average="macro", **common),
            "recall": tmc.MulticlassRecall(average="macro", **common),
        }
    )


def _logits_with_gaps(seed: int, c: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels where one class never occurs as a label and one is never predicted (C >= 3),
    and for C >= 5 one class neither occurs nor is predicted (left out of the macro mean)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen)
    labels = torch.randint(0, c, (n,), generator=gen)
    if c >= 3:
        labels[labels == 0] = 1  # class 0: predicted sometimes, never a label
        logits[:, 2] -= 100  # class 2: a label, never predicted
    if c >= 5:
        labels[labels == 4] = 3
        logits[:, 4] -= 100  # class 4: neither
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("c", [2, 3, 4, 5, 6, 7])
def test_classification_matches_torchmetrics_and_sklearn(seed: int, c: int) -> None:
    logits, labels = _logits_with_gaps(seed, c, 97)
    losses = torch.rand(8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ours, oracle = EpochMetrics(_config(), c, torch.device("cpu")), _oracle(c)
    total = weight = 0.0
    for i, part in enumerate(_batches(len(labels), torch.Generator().manual_seed(seed))):
        ours.update(logits[part], labels[part], losses[i].float())
        oracle.update(logits[part], labels[part])
        n = len(labels[part])
        total, weight = total + float(losses[i].float()) * n, weight + n
    got = ours.compute()
    want = {f"val/{k}": float(v) for k, v in oracle.compute().items()}
    assert set(got) == {"val/loss", *want}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=REL, abs=1e-12), key
    assert got["val/loss"] == pytest.approx(total / weight, rel=1e-12)  # float64 weighted mean of batch losses

    pred = logits.argmax(1).numpy()
    # torchmetrics' macro mean runs over the classes that occur as a label or a prediction.
    present = sorted(set(labels.tolist()) | set(pred.tolist()))
    assert len(present) < c or c < 5  # the test does exercise absent classes
    y = labels.numpy()
    assert got["val/acc"] == pytest.approx(skm.accuracy_score(y, pred), rel=REL)
    for key, fn in (("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)):
        assert got[f"val/{key}"] == pytest.approx(fn(y, pred, labels=present, average="macro", zero_division=0), rel=REL), key


def test_single_logit_binary_and_class_weights() -> None:
    gen = torch.Generator().manual_seed(5)
    z, labels = torch.randn(61, 1, generator=gen), torch.randint(0, 2, (61,), generator=gen)
    cfg = _config(loss={"name": "cross_entropy", "class_weights": [0.25, 3.0]})
    ours, oracle = EpochMetrics(cfg, 1, torch.device("cpu")), _oracle(2)
    total = weight = 0.0
    for i, part in enumerate([slice(0, 20), slice(20, 45), slice(45, 61)]):
        loss = torch.tensor(0.5 + i)
        ours.update(z[part], labels[part], loss)
        oracle.update(class_scores(z[part]), labels[part])
        w = float(torch.tensor([0.25, 3.0], dtype=torch.float64)[labels[part]].sum())
        total, weight = total + float(loss) * w, weight + w
    got = ours.compute()
    for key, value in oracle.compute().items():
        assert got[f"val/{key}"] == pytest.approx(float(value), rel=REL), key
    assert got["val/acc"] == pytest.approx(skm.accuracy_score(labels.numpy(), (z[:, 0] > 0).long().numpy()), rel=REL)
    assert got["val/loss"] == pytest.approx(total / weight, rel=1e-12)  # weighted by sum(w_y), as the loss is


def test_ignored_labels_never_count() -> None:
    gen = torch.Generator().manual_seed(9)
    logits, labels = torch.randn(4, 6, 5, generator=gen), torch.randint(0, 5, (4, 6), generator=gen)
    labels[:, 4:] = -100  # padding of (B, T) labels
    labels[0, 0] = -100
    flat = EpochMetrics(_config(), 5, torch.device("cpu"))
    flat.update(logits.reshape(-1, 5), labels.reshape(-1), torch.tensor(1.0))  # -100 in (N,) labels too
    seq = EpochMetrics(_config(), 5, torch.device("cpu"))
    seq.update(logits, labels, torch.tensor(1.0))
    keep = labels.reshape(-1) != -100
    oracle = _oracle(5)
    oracle.update(logits.reshape(-1, 5)[keep], labels.reshape(-1)[keep])
    want = {f"val/{k}": float(v) for k, v in oracle.compute().items()} | {"val/loss": 1.0}
    assert flat.compute() == pytest.approx(want, rel=REL) and seq.compute() == pytest.approx(want, rel=REL)
    assert int(flat.confusion_matrix().sum()) == int(keep.sum())


def test_many_classes_keep_margins_with_the_same_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    logits, labels = _logits_with_gaps(3, 7, 120)
    full = EpochMetrics(_config(), 7, torch.device("cpu"))
    monkeypatch.setattr(sufficient, "MATRIX_MAX_CLASSES", 6)
    margins = EpochMetrics(_config(), 7, torch.device("cpu"))
    assert full.stats.full and not margins.stats.full
    for part in (slice(0, 50), slice(50, 120)):
        full.update(logits[part], labels[part], torch.tensor(0.0))
        margins.update(logits[part], labels[part], torch.tensor(0.0))
    assert full.compute() == margins.compute()
    assert all(torch.equal(a, b) for a, b in zip(full.confusion(), margins.confusion(), strict=True))
    assert margins.confusion_matrix() is None
    oracle = tmc.MulticlassConfusionMatrix(7)
    oracle.update(logits, labels)
    assert torch.equal(full.confusion_matrix(), oracle.compute())


def test_reset_starts_a_new_pass_and_loss_only_steps_have_no_task_metrics() -> None:
    metrics = EpochMetrics(_config(), 3, torch.device("cpu"))
    metrics.update(torch.eye(3), torch.tensor([0, 1, 2]), torch.tensor(2.0))
    assert metrics.compute()["val/acc"] == 1.0
    metrics.reset()
    metrics.update_loss(torch.tensor(0.5), 10)
    metrics.update_loss(torch.tensor(2.0), 30)
    assert metrics.compute() == {"val/loss": pytest.approx((5 + 60) / 40, rel=1e-12)}


def _regression(pred: torch.Tensor, target: torch.Tensor, cuts: list[int]) -> tuple[dict[str, float], dict[str, float]]:
    ours = EpochMetrics(_config(loss={"name": "mse"}), 1, torch.device("cpu"))
    oracle = torchmetrics.MetricCollection({"mse": tmr.MeanSquaredError(), "mae": tmr.MeanAbsoluteError(), "r2": tmr.R2Score()})
    for a, b in zip([0, *cuts], [*cuts, len(target)], strict=True):
        ours.update(pred[a:b].reshape(-1, 1), target[a:b], torch.tensor(0.0))
        oracle.update(pred[a:b], target[a:b])
    got = {k.removeprefix("val/"): v for k, v in ours.compute().items() if k != "val/loss"}
    try:
        want = {k: float(v) for k, v in oracle.compute().items()}
    except ValueError as exc:  # R2Score refuses fewer than two samples
        want = {"error": str(exc)}
    return got, want


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_matches_torchmetrics_and_sklearn(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(83, generator=gen) * 3 + 1
    pred = target + torch.randn(83, generator=gen)
    got, want = _regression(pred, target, [10, 11, 60])
    assert got == pytest.approx(want, rel=REL)
    y, p = target.double().numpy(), pred.double().numpy()
    sk = {"mse": skm.mean_squared_error(y, p), "mae": skm.mean_absolute_error(y, p), "r2": skm.r2_score(y, p)}
    assert got == pytest.approx(sk, rel=1e-9)  # both float64


def test_regression_constant_target_and_one_sample_follow_r2score() -> None:
    target = torch.full((20,), 2.5)
    got, want = _regression(target.clone(), target, [7])
    assert got["r2"] == want["r2"] == 1.0  # perfect on a constant target
    got, want = _regression(target + torch.linspace(-1, 1, 20), target, [7])
    assert got["r2"] == want["r2"] == 0.0  # constant target, errors: torchmetrics' 0, not -inf
    assert got["mse"] == pytest.approx(want["mse"], rel=REL)
    got, want = _regression(torch.tensor([1.0]), torch.tensor([3.0]), [])
    assert "two samples" in want["error"]  # torchmetrics raises mid-training; the built-in r2 is undefined: nan
    assert math.isnan(got["r2"]) and got["mse"] == 4.0 and got["mae"] == 2.0
    with pytest.warns(Warning):
        assert math.isnan(skm.r2_score([3.0], [1.0]))


def test_multi_output_regression_averages_r2_over_columns() -> None:
    gen = torch.Generator().manual_seed(4)
    target = torch.randn(40, 3, generator=gen)
    pred = target + 0.5 * torch.randn(40, 3, generator=gen)
    ours = EpochMetrics(_config(loss={"name": "mse"}), 3, torch.device("cpu"))
    for part in (slice(0, 13), slice(13, 40)):
        ours.update(pred[part], target[part], torch.tensor(0.0))
    got = ours.compute()
    y, p = target.double().numpy(), pred.double().numpy()
    assert got["val/r2"] == pytest.approx(skm.r2_score(y, p), rel=1e-9)
    assert got["val/mse"] == pytest.approx(skm.mean_squared_error(y, p), rel=1e-9)


PROBE = textwrap.dedent(
    """
    import json, sys
    from taktstock import cli

    for args in json.loads(sys.argv[1]):  # each command through the entry point, in this one fresh interpreter
        sys.argv = ["taktstock", *args]
        code = 0
        try:
            cli.main()
        except SystemExit as exit:
            code = exit.code or 0
        cli._register = lambda: None  # the app keeps the commands registered by the first call
        print("PROBE", args[0], code, "torchmetrics" in sys.modules, file=sys.stderr, flush=True)
    """
)


def test_train_and_evaluate_never_import_torchmetrics(workdir: Path) -> None:
    # A fresh interpreter, not the test fork server (which has imported torchmetrics already).
    write_config(workdir / "exp.yaml", tiny_config(train={"epochs": 1, "batch_size": 64}))
    commands = [["train", "exp.yaml", "--run-dir", "run"], ["evaluate", "run"]]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)],
        cwd=workdir,
        env=cli_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    probes = [line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("PROBE ")]
    assert probes == [["train", "0", "False"], ["evaluate", "0", "False"]], proc.stderr[-3000:]
    result = json.loads((workdir / "run" / "eval" / "metrics.json").read_text())["metrics"]
    assert {"test/acc", "test/f1", "test/precision", "test/recall", "test/loss"} <= set(result)
    report = json.loads((workdir / "run" / "eval" / "report.json").read_text())
    assert sum(c["support"] for c in report.values()) == 270  # the whole test split, from the counts
    assert (workdir / "run" / "eval" / "confusion_matrix.png").is_file()


def test_torchmetrics_extra_metrics_see_the_same_scores() -> None:
    # metrics.extra stays torchmetrics' job (imported only then); end to end in tests/test_extensions.py.
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(50, 4, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    metrics = EpochMetrics(_config(metrics={"extra": ["torchmetrics:AUROC"]}), 4, torch.device("cpu"))
    oracle = tmc.MulticlassAUROC(num_classes=4)
    for part in (slice(0, 17), slice(17, 50)):
        metrics.update(logits[part], labels[part], torch.tensor(0.0))
        oracle.update(logits[part], labels[part])
    assert metrics.compute()["val/auroc"] == float(oracle.compute())
