"""The MLflow form of a table run (csv/parquet source): a pyfunc model that takes a pandas DataFrame of raw rows.

A table run's network takes the encoded matrix (or the numeric columns and level indices), so the traced network
alone would push the encoding onto every caller. This pyfunc carries the run's files instead (config.yaml,
preprocessing.json, the best weights) and answers through the code `taktstock predict` uses (`encode_table_rows`,
`predict_rows`): the same encoding rebuilt from preprocessing.json, the same model, the same output columns, so its
predictions equal predict's. Loading it needs taktstock (and scikit-learn, pandas, pyarrow) in the environment.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from taktstock.checkpoint.inference import LoadedRun, encode_table_rows, load_run, predict_rows
from taktstock.checkpoint.weights import save_weights
from taktstock.run_dir import RunDir


class TableRowsModel(mlflow.pyfunc.PythonModel):
    """DataFrame of raw rows (the training feature columns; gaps, unseen levels, extra columns allowed) ->
    DataFrame with `prediction` and one `prob_<class>` column per class (or the predicted value), as predict writes."""

    def load_context(self, context: Any) -> None:
        self.loaded = load_run(context.artifacts["run"], "best")

    # MLflow reads this type hint (pandas resolved at module level): a DataFrame hint keeps the signature given at logging.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return predict_frame(self.loaded, model_input)


def predict_frame(loaded: LoadedRun, frame: pd.DataFrame) -> pd.DataFrame:
    """Predictions for a pandas DataFrame of raw rows, through predict's encoding and model call."""
    import pyarrow as pa
    import torch

    table = pa.Table.from_pandas(pd.DataFrame(frame), preserve_index=False)
    inputs = [torch.from_numpy(a) for a in encode_table_rows(loaded, table, "MLflow model input")]
    header, rows = predict_rows(loaded, inputs)
    return pd.DataFrame(rows, columns=header)


def log_table_model(loaded: LoadedRun, run_dir: str | Path, registered_model_name: str | None = None, **kwargs: Any) -> Any:
    """Log RUN_DIR's best model (`loaded`: its inference model) as the table pyfunc, artifact `model` of the active
    MLflow run; returns MLflow's ModelInfo."""
    import pyarrow as pa
    import sklearn
    import torch
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    import taktstock
    from taktstock.data.tables import example_rows

    run = RunDir(Path(run_dir))
    columns = [name for name, _ in loaded.preprocessing["table"]["columns"]]
    example = example_rows(loaded.preprocessing["table"])
    # Column names and presence are checked by MLflow; the types are left to the stored encoding, which casts as
    # `taktstock predict` does: MLflow's own checks would refuse an int64 column where a double was inferred, or
    # integer codes in a text column, that predict accepts.
    inputs = Schema([ColSpec(AnyType(), name, required=True) for name in columns])
    signature = ModelSignature(inputs, infer_signature(example, predict_frame(loaded, example)).outputs)
    with tempfile.TemporaryDirectory() as tmp:
        # The run's files as a small run directory of their own: what load_run needs, and nothing of the training data.
        files = RunDir(Path(tmp) / "run")
        files.root.mkdir()
        shutil.copyfile(run.config, files.config)
        files.preprocessing.write_text(json.dumps(loaded.preprocessing))
        # The weights the inference model holds (best, or the fallback load_run took), normalisation buffers left out.
        save_weights(loaded.model.model, files.best)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("mlflow_table_entry.py")),  # models from code: nothing pickled
            artifacts={"run": str(files.root)},
            input_example=example,
            signature=signature,
            # Stated rather than inferred: inference would re-load the model in a subprocess (tens of seconds).
            pip_requirements=[
                f"taktstock=={taktstock.__version__}",
                f"torch=={torch.__version__.split('+')[0]}",
                f"scikit-learn=={sklearn.__version__}",
                f"pandas=={pd.__version__}",
                f"pyarrow=={pa.__version__}",
            ],
            registered_model_name=registered_model_name,
            **kwargs,
        )
