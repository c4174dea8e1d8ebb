"""Real tables (CSV, TSV, .csv.gz, Parquet): typed columns with gaps, an encoding fitted on the training split only
and stored as JSON, the rebuilt encoder bit-identical to the fitted one, predict on raw rows, and exact resume."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config, write_config

from taktstock.config.loader import validate
from taktstock.config.schema import Config
from taktstock.data.prepare import _split_indices, prepare
from taktstock.data.tables import TableEncoder, _column_transformer, _frame, load_table, read_table
from taktstock.errors import ConfigError, UserError

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["barbera", "barolo", "grignolino"]


def cli(workdir: Path, *args: str, name: str = "cli", fresh: bool = False) -> tuple[int, str]:
    """`taktstock ARGS` as a real process, forked from the pre-imported server of tests/resume_harness.py (seconds
    faster), or with `fresh` started as a new interpreter (the reference run the SIGKILL test compares with)."""
    from resume_harness import reference_server, shared_server

    log = workdir / f"{name}.log"
    server = reference_server() if fresh else shared_server()
    rc = server.run(list(args), workdir, log, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    return rc, log.read_text()


def make_config(**data: Any) -> Config:
    return validate(tiny_config(data={"normalize": "none"} | data), {}, "test")


def mixed_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Every column kind, with gaps: numeric, text levels (one rare), boolean, dates with times, an id, a target."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 10, n).round(2)
    age[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "age": age,
            "count": rng.integers(0, 9, n),
            "island": pd.Series(rng.choice(["Biscoe", "Dream", "Torgersen", "Rare", None], n, p=[0.4, 0.3, 0.2, 0.02, 0.08]), dtype=object),
            "member": pd.Series(rng.choice([True, False, None], n, p=[0.5, 0.4, 0.1]), dtype=object),
            "seen": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 400 * 24, n), unit="h"),
            "label": rng.choice(["a", "b"], n),
        }
    )


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if ".tsv" in path.name else ",")
    return path


def table_config(path: Path, **data: Any) -> Config:
    source = "parquet" if path.suffix == ".parquet" else "csv"
    return make_config(**{"source": source, "path": str(path), "target": "label", "drop": ["id"], "cache_dir": f"cache-{path.name}"} | data)


def test_mixed_types_with_gaps_are_typed_and_encoded(workdir: Path) -> None:
    data = prepare(table_config(write_table(mixed_frame(), workdir / "t.csv"), min_frequency=10))
    kinds = dict(data.table["columns"])
    assert kinds == {"age": "numeric", "count": "numeric", "island": "categorical", "member": "boolean", "seen": "datetime"}
    assert data.table["datetime_parts"] == {"seen": ["year", "month", "dayofweek", "hour"]}
    assert data.table["numeric"]["indicators"] == ["age", "member"]  # only columns with gaps in training
    names = data.feature_names
    assert names[:6] == ["age", "count", "member", "seen.year", "seen.month", "seen.dayofweek"]
    # Missing is a level of its own; 'Rare' (< 10 training rows) merged into the rare level.
    assert names[-5:] == ["island_Biscoe", "island_Dream", "island_Torgersen", "island_None", "island_infrequent_sklearn"]
    x = np.concatenate([data.split(s).x for s in ("train", "val", "test")])
    assert x.dtype == np.float32 and np.isfinite(x).all() and x.shape[1] == len(names)
    onehot = x[:, -5:]
    assert np.array_equal(onehot.sum(1), np.ones(len(x), np.float32))  # every row: exactly one level (none unseen here)
    assert set(np.unique(x[:, names.index("member")])) <= {0.0, 1.0}


def test_encoding_is_fitted_on_the_training_split_only(workdir: Path) -> None:
    frame = mixed_frame()
    config = table_config(workdir / "t.csv")
    y = np.array([0 if v == "a" else 1 for v in frame["label"]])
    parts = _split_indices(config, y)  # the split depends on the targets and the seed only
    frame.loc[parts["test"], "age"] = 1000.0  # would move a median fitted on all rows
    frame.loc[parts["test"][:3], "island"] = "OnlyInTest"
    write_table(frame, workdir / "t.csv")
    data = prepare(config)
    fill = dict(zip(data.table["numeric"]["columns"], data.table["numeric"]["fill"], strict=True))
    assert fill["age"] == float(np.nanmedian(frame.loc[parts["train"], "age"]))
    assert fill["age"] != float(np.nanmedian(frame["age"]))
    island = data.table["categorical"]["levels"][0]
    assert "OnlyInTest" not in island
    # Its test rows are "unknown": all zeros in the one-hot block.
    test_x = data.split("test").x
    assert (test_x[:, [i for i, n in enumerate(data.feature_names) if n.startswith("island_")]].sum(1) == 0).sum() == 3


@pytest.mark.parametrize("encoding", ["onehot", "index"])
def test_rebuilt_encoder_from_json_is_bit_identical_including_unseen_and_missing(workdir: Path, encoding: str) -> None:
    config = table_config(write_table(mixed_frame(), workdir / "t.csv"), min_frequency=10, categorical_encoding=encoding)
    loaded = load_table(config)
    train_rows = _split_indices(config, loaded.y)["train"]
    encoder = TableEncoder.fit(loaded.table, loaded.kinds, config, train_rows)
    state = json.loads(json.dumps(encoder.state()))  # through text, as preprocessing.json stores it
    rebuilt = TableEncoder.from_state(state)
    # The reference: scikit-learn's ColumnTransformer fitted directly on the training rows.
    frame = _frame(loaded.table.take(train_rows), loaded.kinds, encoder.dates, ConfigError)
    categorical = [c for c, k in loaded.kinds.items() if k == "categorical"]
    direct = _column_transformer([c for c in frame.columns if c not in categorical], categorical, encoding, "median", 10).fit(frame)
    fitted = TableEncoder(loaded.kinds, encoder.dates, encoding, direct)
    assert fitted.state() == state
    new = mixed_frame(30, seed=5).drop(columns=["id", "label"])
    new.loc[0, "island"] = "Atlantis"  # unseen in training
    new.loc[1, ["age", "member", "seen"]] = [np.nan, None, pd.NaT]
    rows = read_table(write_table(new, workdir / "new.parquet"))
    for table in (loaded.table, rows):
        a, b = fitted.transform(table), rebuilt.transform(table)
        assert a.features.tobytes() == b.features.tobytes() and a.categories.tobytes() == b.categories.tobytes()
        assert a.unknown == b.unknown
    got = rebuilt.transform(rows)
    assert got.unknown == {"island": 1}
    if encoding == "index":
        assert got.features.shape[1] == len(rebuilt.output_names()) and got.categories.dtype == np.int64
        assert got.categories[0, 0] == 0  # unknown is index 0
        # Biscoe, Dream, Torgersen, None, rare + unknown.
        assert rebuilt.cardinalities() == [6] and got.categories.max() < 6
    else:
        assert got.categories.shape == (30, 0)
        assert np.isfinite(got.features).all()
    state["categorical"]["rare"] = [["Nowhere"]]  # a state no fit can produce is refused, not half-applied
    with pytest.raises(UserError, match="cannot be rebuilt exactly"):
        TableEncoder.from_state(state)


def test_csv_tsv_gzip_and_parquet_of_one_table_prepare_identically(workdir: Path) -> None:
    frame = mixed_frame()
    prepared = [prepare(table_config(write_table(frame, workdir / name))) for name in ("t.csv", "t.tsv", "t.csv.gz", "t.parquet")]
    first = prepared[0]
    for other in prepared[1:]:
        assert other.table == first.table and other.class_names == first.class_names
        for split in ("train", "val", "test"):
            for a, b in zip(first.arrays[split], other.arrays[split], strict=True):
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_rows_with_a_missing_target_are_dropped_and_counted(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = mixed_frame()
    frame.loc[[3, 10, 77], "label"] = None
    data = prepare(table_config(write_table(frame, workdir / "t.csv")))
    assert sum(len(data.arrays[s][1]) for s in ("train", "val", "test")) == len(frame) - 3
    assert "dropped 3 of 240 rows of" in capsys.readouterr().err


def test_table_mistakes_are_config_errors_naming_the_column(workdir: Path) -> None:
    frame = mixed_frame()
    path = write_table(frame, workdir / "t.csv")
    with pytest.raises(ConfigError, match=r"data.target: column 'species' not in .*t.csv \(columns: id, age"):
        prepare(make_config(source="csv", path=str(path), target="species"))
    with pytest.raises(ConfigError, match=r"data.max_categories: column 'id' has 240 levels"):
        prepare(make_config(source="csv", path=str(path), target="label"))
    with pytest.raises(ConfigError, match=r"data.drop: column\(s\) idx not in"):
        prepare(table_config(path, drop=["idx"]))
    with pytest.raises(ConfigError, match=r"column 'island': values that are not numbers"):
        prepare(table_config(path, numeric=["island"]))
    frame["empty"] = np.nan
    write_table(frame, workdir / "gap.csv")
    with pytest.raises(ConfigError, match=r"data.features: column 'empty' has no values in the training rows"):
        prepare(table_config(workdir / "gap.csv"))
    # Forced categorical: integer codes become levels.
    data = prepare(table_config(path, categorical=["count"]))
    assert dict(data.table["columns"])["count"] == "categorical" and "count_0" in data.feature_names


def test_a_table_config_error_exits_2_through_the_cli_naming_the_column(workdir: Path) -> None:
    frame = mixed_frame()
    frame["notes"] = None
    write_table(frame, workdir / "t.csv")
    cfg = write_config(workdir / "bad.yaml", tiny_config(data={"source": "csv", "path": "t.csv", "target": "label", "drop": ["id"]}))
    rc, output = cli(workdir, "prepare", str(cfg))
    assert rc == 2 and "error: data.features: column 'notes' has no values in the training rows" in output
    assert "Traceback" not in output
    # Index encoding for a model without embeddings: named before training starts.
    data = {"source": "csv", "path": "t.csv", "target": "label", "drop": ["id", "notes"], "categorical_encoding": "index"}
    cfg = write_config(workdir / "mlp.yaml", tiny_config(data=data))
    rc, output = cli(workdir, "train", str(cfg), "--run-dir", "run", name="train")
    assert rc == 2 and "error: model.name: mlp takes no 'cardinalities'" in output and "Traceback" not in output


def wine_frame(seed: int = 0) -> pd.DataFrame:
    """scikit-learn's wine table with alcohol binned into text levels, some cells blanked, and named classes."""
    import sklearn.datasets

    bunch = sklearn.datasets.load_wine(as_frame=True)
    frame = bunch.data.copy()
    frame["alcohol"] = pd.cut(frame["alcohol"], bins=[0, 12.4, 13.4, 99], labels=["low", "mid", "high"]).astype(object)
    rng = np.random.default_rng(seed)
    for column in ("alcohol", "malic_acid", "color_intensity", "proline"):
        frame.loc[rng.random(len(frame)) < 0.08, column] = None
    frame["cultivar"] = [["barolo", "grignolino", "barbera"][t] for t in bunch.target]
    return frame


def wine_experiment(**train: Any) -> dict[str, Any]:
    return tiny_config(
        experiment={"name": "wine"},
        data={"source": "csv", "path": "wine.csv", "target": "cultivar"},
        model={"name": "mlp", "hidden": [32]},
        optim={"name": "adamw", "lr": 0.01},
        train={"epochs": 15, "batch_size": 32, "log_every_n_steps": 2} | train,
        logging={"tensorboard": False, "plots": False, "progress": "off"},
    )


@dataclass
class TableRun:
    """A run trained through the CLI on the wine table (shared by the tests of one encoding)."""

    root: Path
    encoding: str
    frame: pd.DataFrame  # the source table as written (gaps, an unseen level in the test split)
    test_rows: np.ndarray  # source rows of the test split
    cfg: Path


@pytest.fixture(scope="module", params=["onehot", "index"])
def table_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TableRun:
    """onehot: a CSV source and the mlp; index: a Parquet source and the tabular model's embeddings."""
    encoding = request.param
    root = tmp_path_factory.mktemp(f"table-{encoding}")
    source, name = ("csv", "wine.csv") if encoding == "onehot" else ("parquet", "wine.parquet")
    experiment = wine_experiment(epochs=8, log_every_n_steps=1)
    experiment["data"] = {"source": source, "path": name, "target": "cultivar", "categorical_encoding": encoding}
    experiment["model"] = {"name": "mlp" if encoding == "onehot" else "tabular", "hidden": [32], "dropout": 0.2}
    experiment["checkpoint"] = {"every_n_steps": 3}
    frame = wine_frame()
    write_table(frame, root / name)
    # The split follows the targets and the seed only, so a level put into a test row stays unseen in training.
    config = validate(experiment | {"data": experiment["data"] | {"path": str(root / name)}}, {}, "wine")
    test_rows = _split_indices(config, load_table(config).y)["test"]
    frame.loc[frame.index[test_rows[0]], "alcohol"] = "very high"
    write_table(frame, root / name)
    cfg = write_config(root / "wine.yaml", experiment)
    rc, log = cli(root, "train", str(cfg), "--run-dir", "run", name="train", fresh=True)
    assert rc == 0, log
    return TableRun(root, encoding, frame, test_rows, cfg)


def test_predict_on_raw_rows_equals_evaluate_for_both_encodings(table_run: TableRun) -> None:
    import torch

    from taktstock.evaluation.evaluate import load_trained_model
    from taktstock.run_dir import RunDir

    root = table_run.root
    rc, log = cli(root, "evaluate", "run", name="evaluate")
    assert rc == 0, log
    test_acc = json.loads((root / "run/eval/metrics.json").read_text())["metrics"]["test/acc"]
    assert test_acc >= 0.7
    prep = json.loads((root / "run/preprocessing.json").read_text())
    assert prep["table"]["encoding"] == table_run.encoding and prep["table"]["categorical"]["columns"] == ["alcohol"]

    # The raw test rows as a user would send them: no target column, gaps, the unseen level; the other file format.
    rows = table_run.frame.iloc[table_run.test_rows].drop(columns=["cultivar"]).reset_index(drop=True)
    assert rows.isna().any().any() and (rows["alcohol"] == "very high").sum() == 1
    rows_file = "rows.parquet" if table_run.encoding == "onehot" else "rows.csv"
    write_table(rows, root / rows_file)
    rc, output = cli(root, "predict", "run", rows_file, "--out", "preds.csv", name="predict")
    assert rc == 0 and "column 'alcohol': 1 row(s) with a level unseen in training, encoded as unknown" in output
    with (root / "preds.csv").open() as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) and list(got[0]) == ["prediction", *(f"prob_{c}" for c in CLASSES)]
    truth = table_run.frame["cultivar"].iloc[table_run.test_rows].tolist()
    hits = sum(r["prediction"] == t for r, t in zip(got, truth, strict=True))
    assert hits / len(truth) == pytest.approx(test_acc, abs=1e-6)  # the same rows, the same model: evaluate's accuracy

    # Bit for bit the probabilities of the trained model on the prepared test split (CSV floats round-trip float32).
    _, data, model = load_trained_model(RunDir(root / "run"))
    test = data.split("test")
    with torch.no_grad():
        if table_run.encoding == "index":
            batch = test.get_batch(np.arange(len(test)))
            logits = model(numeric=batch["numeric"], categorical=batch["categorical"])
        else:
            logits = model(torch.from_numpy(test.x))
    expected = torch.softmax(logits, dim=-1)
    probs = torch.tensor([[float(r[f"prob_{c}"]) for c in CLASSES] for r in got], dtype=torch.float32)
    assert torch.equal(probs, expected)

    # The exported ONNX graph takes the encoded inputs, not yet normalised (x; or numeric and categorical level indices
    # for index): the encoding lives in preprocessing.json, the normalisation inside the graph (docs/data.md).
    import onnxruntime as ort

    rc, output = cli(root, "export", "run", "--format", "onnx", "--out", "m.onnx", name="export")
    assert rc == 0, output
    assert "Warning" not in output, output  # index: two inputs share the batch dimension without the exporter's note
    encoded = TableEncoder.from_state(prep["table"]).transform(read_table(root / rows_file))
    session = ort.InferenceSession(str(root / "m.onnx"), providers=["CPUExecutionProvider"])
    if table_run.encoding == "index":
        assert [(i.name, i.type) for i in session.get_inputs()] == [("numeric", "tensor(float)"), ("categorical", "tensor(int64)")]
        feeds = {"numeric": encoded.features, "categorical": encoded.categories}
    else:
        feeds = {"x": encoded.features}
    onnx_probs = torch.from_numpy(session.run(["y"], feeds)[0])
    assert encoded.features.shape[1] == len(prep["feature_names"])
    # ONNX Runtime's kernels are not PyTorch's: equal up to float32 rounding, not bit for bit.
    assert torch.allclose(onnx_probs, probs, rtol=0, atol=1e-5)
    if table_run.encoding == "index":  # the other formats take the same two inputs (each export checks itself)
        from taktstock.deploy.export import export

        assert export(root / "run", "torchscript")[1] == 0.0 and export(root / "run", "safetensors")[1] == 0.0
        scripted = torch.jit.load(str(root / "run/export/model.pt"))
        numeric, categorical = (torch.from_numpy(a) for a in (encoded.features, encoded.categories))
        with torch.no_grad():
            assert torch.equal(scripted(numeric, categorical), probs)


@pytest.mark.parametrize("table_run", ["index"], indirect=True)  # onehot goes through the same pyfunc; one promote is enough
def test_promoted_mlflow_model_of_a_table_run_takes_raw_rows_and_answers_exactly_as_predict(table_run: TableRun) -> None:
    import mlflow
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    root = table_run.root
    rows = table_run.frame.iloc[table_run.test_rows].drop(columns=["cultivar"]).reset_index(drop=True)
    write_table(rows, root / "served.parquet")
    rc, log = cli(root, "predict", "run", "served.parquet", "--out", "served.csv", name="predict-served")
    assert rc == 0, log
    rc, log = cli(root, "promote", "run", name="promote")
    assert rc == 0 and "promoted to champion" in log, log
    uri = f"sqlite:///{root / 'experiments' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/wine@champion")
    assert [c["name"] for c in model.metadata.signature.inputs.to_dict()] == list(rows.columns)
    # The DataFrame as a user holds it: gaps, the level unseen in training, an integer column where training had floats.
    assert rows.isna().any().any() and (rows["alcohol"] == "very high").sum() == 1
    got = model.predict(rows.astype({"magnesium": "int64"}))
    with (root / "served.csv").open() as f:
        expected = list(csv.DictReader(f))
    assert list(got.columns) == ["prediction", *(f"prob_{c}" for c in CLASSES)]
    assert got["prediction"].tolist() == [r["prediction"] for r in expected]
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in expected])
    assert np.array_equal(got[[f"prob_{c}" for c in CLASSES]].to_numpy(), probs)  # bit for bit
    with pytest.raises(MlflowException, match=r"missing inputs.*alcohol"):
        model.predict(rows.drop(columns=["alcohol"]))


def test_sigkill_and_resume_on_a_table_is_bit_identical_for_both_encodings(table_run: TableRun) -> None:
    from resume_harness import count_lines, kill_and_resume, shared_server

    root, ref = table_run.root, table_run.root / "run"
    stats = kill_and_resume(
        shared_server(), root, table_run.cfg, root / "killed", kills=3, rng=random.Random(5), total_lines=count_lines(ref / "metrics.jsonl")
    )
    assert stats.kills == 3, stats.points
    assert any(stats.resumed_from), stats.resumed_from  # (each resume's step is checked by the harness)
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
        assert (root / "killed" / name).read_bytes() == (ref / name).read_bytes(), name


def test_index_encoding_gives_memory_mapped_dict_samples_identical_on_every_batch_path(workdir: Path) -> None:
    import torch
    from torch.utils.data import DataLoader

    from taktstock.data.loaders import EpochBatchSampler
    from taktstock.data.table_dataset import prepare_index_table

    config = table_config(
        write_table(mixed_frame(), workdir / "t.csv"), min_frequency=10, categorical_encoding="index", normalize="standard"
    )
    data = prepare_index_table(config)
    assert prepare_index_table(config).directory == data.directory  # a cache hit
    spec = data.spec()
    assert spec["categorical"].to_dict() == {"shape": [1], "dtype": "int64", "cardinalities": [6]}
    train = data.split("train")
    assert len(train) == 168 and data.num_outputs == 2 and data.class_names == ["a", "b"]
    assert isinstance(train.arrays()["numeric"], np.memmap)
    sample = train[(3, 5)]
    assert sample["numeric"].dtype == torch.float32 and sample["numeric"].shape == spec["numeric"].shape
    assert sample["categorical"].dtype == torch.int64 and sample["labels"].dtype == torch.int64
    assert torch.equal(train[5]["numeric"], sample["numeric"])  # no random transforms: the epoch changes nothing
    # The normalisation was fitted on the training split: its numeric columns have mean 0 there.
    numeric = train.arrays()["numeric"]
    assert np.abs(np.asarray(numeric, np.float64).mean(0)).max() < 1e-4
    sampler = EpochBatchSampler(len(train), 32, seed=1)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=train.collate, num_workers=2, multiprocessing_context="fork")
    for keys, batch in zip(sampler, loader, strict=True):
        fast = train.get_batch(np.array([i for _, i in keys]), epoch=0)
        assert fast.keys() == batch.keys() and all(torch.equal(fast[k], batch[k]) for k in fast)


def test_tabular_model_embeds_categorical_indices_and_learns_the_wine_table(workdir: Path) -> None:
    import torch

    from taktstock.data.table_dataset import prepare_index_table
    from taktstock.models.registry import build_model

    write_table(wine_frame(), workdir / "wine.csv")
    config = validate(
        wine_experiment() | {"data": {"source": "csv", "path": "wine.csv", "target": "cultivar", "categorical_encoding": "index"}}, {}, "w"
    )
    data = prepare_index_table(config)
    spec = data.spec()
    cards = list(spec["categorical"].cardinalities)
    assert cards == [5]  # unknown, high, low, mid, missing
    torch.manual_seed(0)
    model = build_model("tabular", {"hidden": [32], "embedding_dim": 3}, spec["numeric"].shape, data.num_outputs, cardinalities=cards)
    assert [tuple(e.weight.shape) for e in model.embeddings] == [(5, 3)]
    # A hand-made batch: the unknown index 0 and the last level are valid inputs.
    hand = {"numeric": torch.zeros(2, spec["numeric"].shape[0]), "categorical": torch.tensor([[0], [4]])}
    assert model(**hand).shape == (2, 3)
    train = data.split("train")
    batch = train.get_batch(np.arange(len(train)))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):  # the default step's call convention for dict batches
        logits = model(**{k: v for k, v in batch.items() if k != "labels"})
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = data.split("test").get_batch(np.arange(len(data.split("test"))))
    with torch.no_grad():
        acc = (model(numeric=test["numeric"], categorical=test["categorical"]).argmax(1) == test["labels"]).float().mean()
    assert acc >= 0.85
    for bad in ({"dropout": 1.5}, {"embedding_dim": 0}, {"hidden": [0]}):
        with pytest.raises(ConfigError, match="model: cannot build tabular"):
            build_model("tabular", bad, (4,), 3, cardinalities=[3])


def _whole_array_fit(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalizer.fit before it worked in row chunks: one float64 copy of the whole split."""
    shape, x = x.shape[1:], x.astype(np.float64)
    if kind == "standard":
        shift, scale = x.mean(0), x.std(0)
    elif kind == "global":
        shift, scale = np.full(shape, x.mean()), np.full(shape, x.std())
    else:
        shift, scale = x.min(0), x.max(0) - x.min(0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    return shift.astype(np.float32), scale.astype(np.float32)


def test_normalizer_fitted_in_row_chunks_is_bit_identical_to_the_whole_array_fit_in_a_fraction_of_the_memory() -> None:
    import tracemalloc

    import sklearn.datasets

    from taktstock.data.prepare import Normalizer

    rng = np.random.default_rng(0)
    arrays = [
        *(getattr(sklearn.datasets, f"load_{n}")().data.astype(np.float32) for n in ("digits", "wine", "breast_cancer", "diabetes")),
        (rng.standard_normal((30001, 5)) * [1, 10, 1e3, 1e5, 1e-3] + 7).astype(np.float32),
        rng.standard_normal((999, 1)).astype(np.float32),  # one column: numpy sums it pairwise, not row by row
        rng.random((60, 1, 4, 4)).astype(np.float32),  # image-shaped
    ]
    for x in arrays:
        for kind in ("standard", "minmax", "global"):
            for chunk_rows in (7, 1 << 16):
                got = Normalizer.fit(x, kind, chunk_rows=chunk_rows)
                shift, scale = _whole_array_fit(x, kind)
                assert got.shift.tobytes() == shift.tobytes() and got.scale.tobytes() == scale.tobytes(), (x.shape, kind, chunk_rows)
            applied = got.apply(x.copy(), inplace=True)
            assert applied.tobytes() == ((x - got.shift) / got.scale).astype(np.float32).tobytes()

    big = rng.standard_normal((200_000, 20)).astype(np.float32)  # 16 MB; its float64 copy would be 32 MB
    tracemalloc.start()
    Normalizer.fit(big, "standard", chunk_rows=1 << 14)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < big.nbytes / 2, peak  # a chunk and its running total (the whole-array fit: > 2 x big.nbytes)
