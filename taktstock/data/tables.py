"""Tables (CSV, TSV, Parquet): reading with pyarrow, column types, and an encoding fitted on the training rows only.

pyarrow reads the file; scikit-learn encodes it (a `ColumnTransformer` of `SimpleImputer` with missing-value
indicators and `OneHotEncoder` or `OrdinalEncoder`). The fitted state is plain JSON (fill values, level lists,
column order) kept in RUN_DIR/preprocessing.json, never a pickle: `TableEncoder.from_state` rebuilds the same
transformer from it for evaluate, predict and export, and checks that the rebuild holds exactly that state.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taktstock.errors import ConfigError, UserError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from sklearn.compose import ColumnTransformer

    from taktstock.config.schema import Config

STATE_VERSION = 1  # bump when the encoding changes: old preprocessing.json files are then refused, caches rebuilt
DATE_PARTS = ("year", "month", "dayofweek")  # plus "hour" when the training rows have a time of day
CHUNK_ROWS = 1 << 16  # rows encoded at a time: bounds the float64 temporaries scikit-learn makes


def read_table(path: Path, fmt: str | None = None, error: type[UserError] = ConfigError) -> pa.Table:
    """Read a CSV/TSV (optionally .gz) or Parquet file; `fmt` ("csv"/"parquet") overrides the file suffix."""
    import pyarrow as pa

    name = path.name.lower()
    fmt = fmt or ("parquet" if name.endswith((".parquet", ".pq")) else "csv")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pacsv

            delimiter = "\t" if name.removesuffix(".gz").endswith((".tsv", ".tab")) else ","
            table = pacsv.read_csv(  # compression follows the suffix (.gz, .bz2, ...)
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                # Empty and NA-like cells are missing in text columns too, as they are in numeric ones.
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise error(f"{path}: cannot read as a {fmt} table ({str(exc).splitlines()[0]})") from None
    # Hand-written headers often carry spaces after the commas.
    return table.rename_columns([c.strip() for c in table.column_names])


def column_kinds(table: pa.Table, config: Config, path: Path) -> dict[str, str]:
    """Feature column -> numeric | boolean | datetime | categorical, inferred from the types and data.* overrides."""
    d = config.data
    names = table.column_names
    for key in ("features", "categorical", "numeric", "drop"):
        unknown = [c for c in getattr(d, key) or [] if c not in names]
        if unknown:
            raise ConfigError(f"data.{key}: column(s) {', '.join(unknown)} not in {path} (columns: {', '.join(names)})")
    both = sorted(set(d.categorical) & set(d.numeric))
    if both:
        raise ConfigError(f"data.categorical and data.numeric both list {', '.join(both)}")
    features = [c for c in (d.features or names) if c != d.target and c not in d.drop]
    kinds = {}
    for c in features:
        kinds[c] = "categorical" if c in d.categorical else "numeric" if c in d.numeric else _infer_kind(table.schema.field(c).type, c)
    if d.datetime == "drop":
        dates = [c for c, k in kinds.items() if k == "datetime"]
        if dates:
            print(f"note: data.datetime=drop: not using date column(s) {', '.join(dates)}", file=sys.stderr)
        kinds = {c: k for c, k in kinds.items() if k != "datetime"}
    if not kinds:
        raise ConfigError(f"data.features: no feature columns left in {path}")
    return kinds


def _infer_kind(dtype: pa.DataType, column: str) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype) or pa.types.is_null(dtype):
        return "numeric"  # an all-empty column reads as null and is then reported as all-missing
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return "datetime"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_dictionary(dtype):
        return "categorical"
    raise ConfigError(f"data.features: column '{column}' has type {dtype}, which is not a table feature (list it in data.drop)")


def _date_parts(column: pa.ChunkedArray) -> list[str]:
    """Year, month and day of week, plus the hour when any value has a time of day."""
    import pyarrow.compute as pc

    hours = pc.hour(_as_timestamp(column))
    has_time = bool(pc.any(pc.not_equal(hours, 0)).as_py())
    return [*DATE_PARTS, "hour"] if has_time else list(DATE_PARTS)


def _as_timestamp(column: pa.ChunkedArray) -> pa.ChunkedArray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(column.type):
        return column
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        # Dates as text: pandas spells a missing timestamp "NaT" (so does MLflow's JSON serving input, which the
        # registry also uses to check the input example); it is a gap, as an empty cell is.
        gap = pc.is_in(pc.utf8_trim_whitespace(column), value_set=pa.array(["", "NaT"]))
        column = pc.if_else(gap, pa.scalar(None, column.type), column)
    return pc.cast(column, pa.timestamp("s"))


def _floats(column: pa.ChunkedArray, name: str, error: type[UserError]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        values = pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise error(f"column '{name}': values that are not numbers ({str(exc).splitlines()[0]})") from None
    return values.to_numpy()  # nulls become NaN


def _frame(table: pa.Table, kinds: dict[str, str], dates: dict[str, list[str]], error: type[UserError]) -> pd.DataFrame:
    """The columns scikit-learn sees: float64 with NaN gaps, or text levels (object, None for missing)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = [c for c in kinds if c not in table.column_names]
    if missing:
        raise error(f"missing column(s) {', '.join(missing)} (the model was trained on {', '.join(kinds)})")
    cols: dict[str, Any] = {}
    for name, kind in kinds.items():
        col = table.column(name)
        if kind == "categorical":
            # object dtype: pandas 3 would otherwise infer its own string dtype, whose missing value is NaN.
            cols[name] = pd.Series(pc.cast(col, pa.string()).to_numpy(zero_copy_only=False), dtype=object)
        elif kind == "datetime":
            try:
                stamps = _as_timestamp(col)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise error(f"column '{name}': values that are not dates ({str(exc).splitlines()[0]})") from None
            for part in dates[name]:
                cols[f"{name}.{part}"] = _floats(getattr(pc, "day_of_week" if part == "dayofweek" else part)(stamps), name, error)
        else:  # numeric, boolean (as 0/1)
            cols[name] = _floats(col, name, error)
    return pd.DataFrame(cols, copy=False)


@dataclass
class EncodedTable:
    """Model inputs of some rows: float32 features (one-hot levels included for onehot) and int64 level indices (index)."""

    features: np.ndarray
    categories: np.ndarray
    unknown: dict[str, int] = field(default_factory=dict)  # categorical column -> rows with a level unseen in training


class TableEncoder:
    """The fitted encoding of a table's feature columns; `state()` is its JSON form, `from_state` rebuilds it."""

    def __init__(self, kinds: dict[str, str], dates: dict[str, list[str]], encoding: str, transformer: ColumnTransformer) -> None:
        self.kinds = kinds
        self.dates = dates
        self.encoding = encoding
        self.transformer = transformer

    @classmethod
    def fit(cls, table: pa.Table, kinds: dict[str, str], config: Config, rows: np.ndarray | None = None) -> TableEncoder:
        """Fit on the training `rows` of `table` (default: all); raises `ConfigError` naming an all-missing column."""
        import pyarrow as pa

        d = config.data
        train = table if rows is None else table.take(pa.array(rows))
        dates = {c: _date_parts(train.column(c)) for c, k in kinds.items() if k == "datetime"}
        frame = _frame(train, kinds, dates, ConfigError)
        del train  # the copy of the training rows: the frame holds what the fit needs
        for c in frame.columns:
            if frame[c].isna().all():
                source = c.rpartition(".")[0] if c not in kinds else c
                raise ConfigError(f"data.features: column '{source}' has no values in the training rows (list it in data.drop)")
        categorical = [c for c, k in kinds.items() if k == "categorical"]
        numeric = [c for c in frame.columns if c not in categorical]
        transformer = _column_transformer(numeric, categorical, d.categorical_encoding, d.numeric_impute, d.min_frequency)
        # Each part is fitted on its own columns: ColumnTransformer.fit would also encode the whole training frame,
        # only to discard it (on a large table the biggest allocation of the whole preparation). The transformer
        # used from here on is the one rebuilt from the fitted state, the same construction as at predict time.
        parts = {name: part.fit(frame[cols]) for name, part, cols in transformer.transformers}
        del frame
        num, cat, names = _parts_state(numeric, parts.get("numeric"), categorical, parts.get("categorical"))
        for c, levels, rare in zip(categorical, cat["levels"], cat["rare"], strict=True):
            if rare is not None and set(rare) == set(levels):
                raise ConfigError(
                    f"data.min_frequency: every level of column '{c}' is rarer than {d.min_frequency}; lower it or list '{c}' in data.drop"
                )
        state = _state(d.categorical_encoding, kinds, dates, num, cat, names)
        return cls.from_state(state, ConfigError)

    def transform(self, table: pa.Table, error: type[UserError] = UserError) -> EncodedTable:
        """Encode rows (any row count, chunk by chunk); unseen levels become "unknown" and are counted."""
        numeric = self.state_numeric_columns()
        categorical = [c for c, k in self.kinds.items() if k == "categorical"]
        n = table.num_rows
        n_out = len(self.transformer.get_feature_names_out())
        slices = self.transformer.output_indices_
        cat_slice = slices.get("categorical", slice(0, 0))
        if self.encoding == "index":
            features = np.empty((n, n_out - (cat_slice.stop - cat_slice.start)), np.float32)
            categories = np.empty((n, len(categorical)), np.int64)
        else:
            features, categories = np.empty((n, n_out), np.float32), np.empty((n, 0), np.int64)
        unknown = dict.fromkeys(categorical, 0)
        known = {c: _levels(self.transformer, c) for c in categorical}
        for start in range(0, n, CHUNK_ROWS):
            frame = _frame(table.slice(start, CHUNK_ROWS), self.kinds, self.dates, error)
            stop = start + len(frame)
            for c in categorical:
                unknown[c] += int((~_is_known(frame[c], known[c])).sum())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # unknown levels: counted above, reported by the caller
                out = self.transformer.transform(frame)
            if self.encoding == "index":
                features[start:stop] = out[:, slices["numeric"]] if numeric else out[:, :0]
                # OrdinalEncoder gives 0..K-1 and -1 for unknown: shift so that index 0 is "unknown".
                categories[start:stop] = out[:, cat_slice].astype(np.int64) + 1
            else:
                features[start:stop] = out
        return EncodedTable(features, categories, {c: k for c, k in unknown.items() if k})

    def state_numeric_columns(self) -> list[str]:
        return _columns(self.transformer, "numeric")

    def output_names(self) -> list[str]:
        """Names of the float feature columns (numeric parts, missing indicators, one-hot levels)."""
        names = [str(n) for n in self.transformer.get_feature_names_out()]
        if self.encoding == "index":
            return names[: len(names) - len(_columns(self.transformer, "categorical"))]
        return names

    def cardinalities(self) -> list[int]:
        """index encoding: embedding rows per categorical column (unknown + the levels after merging rare ones)."""
        state = self.state()["categorical"]
        return [
            1 + len([v for v in lv if v not in set(rare or [])]) + bool(rare)
            for lv, rare in zip(state["levels"], state["rare"], strict=True)
        ]

    def state(self) -> dict[str, Any]:
        """The fitted state as JSON-serialisable data (what preprocessing.json stores under "table")."""
        t = self.transformer
        parts = t.named_transformers_
        num, cat, names = _parts_state(_columns(t, "numeric"), parts.get("numeric"), _columns(t, "categorical"), parts.get("categorical"))
        return _state(self.encoding, self.kinds, self.dates, num, cat, names)

    @classmethod
    def from_state(cls, state: dict[str, Any], error: type[UserError] = UserError) -> TableEncoder:
        """Rebuild the fitted encoder from `state()` alone, by fitting the same scikit-learn pipeline on the smallest
        frame that has exactly the stored statistics (each fill value, a gap where an indicator exists, every level
        with its frequent/rare status); the result is checked against `state` before use."""
        if state.get("version") != STATE_VERSION:
            raise error(f"preprocessing.json: table encoding version {state.get('version')} (this taktstock reads {STATE_VERSION})")
        num, cat = state["numeric"], state["categorical"]
        any_rare = any(r is not None for r in cat["rare"])
        repeat = 2 if any_rare else 1  # frequent levels appear twice, rare ones once, under min_frequency=2
        columns: dict[str, list[Any]] = {}
        for c, levels, rare in zip(cat["columns"], cat["levels"], cat["rare"], strict=True):
            rare_set = set(rare or [])
            columns[c] = [v for v in levels for _ in range(1 if v in rare_set else repeat)]
        rows = max([2, *(len(v) for v in columns.values())])
        import pandas as pd

        data: dict[str, Any] = {}
        for c, fill in zip(num["columns"], num["fill"], strict=True):
            values = np.full(rows, fill, np.float64)  # the median of copies of one value is that value, exactly
            if c in num["indicators"]:
                values[0] = np.nan
            data[c] = values
        for c, levels, rare in zip(cat["columns"], cat["levels"], cat["rare"], strict=True):
            pad = next(v for v in levels if v not in set(rare or []))  # padding a frequent level keeps it frequent
            data[c] = pd.Series(columns[c] + [pad] * (rows - len(columns[c])), dtype=object)
        frame = pd.DataFrame(data)[[*num["columns"], *cat["columns"]]]
        transformer = _column_transformer(num["columns"], cat["columns"], state["encoding"], "median", 2 if any_rare else None)
        transformer.fit(frame)
        kinds = {c: k for c, k in state["columns"]}
        encoder = cls(kinds, {c: list(p) for c, p in state["datetime_parts"].items()}, state["encoding"], transformer)
        if encoder.state() != state:
            raise error("preprocessing.json: the stored table encoding cannot be rebuilt exactly (edited by hand?)")
        return encoder


def _parts_state(
    numeric: list[str], imputer: Any, categorical: list[str], encoder: Any
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(numeric state, categorical state, output column names) of a fitted SimpleImputer and encoder."""
    num: dict[str, Any] = {"columns": numeric, "fill": [], "indicators": []}
    cat: dict[str, Any] = {"columns": categorical, "levels": [], "rare": []}
    names: list[str] = []
    if numeric:
        num["fill"] = [float(v) for v in imputer.statistics_]
        if imputer.indicator_ is not None:
            num["indicators"] = [numeric[i] for i in imputer.indicator_.features_]
        names += [str(n) for n in imputer.get_feature_names_out()]
    if categorical:
        cat["levels"] = [_json_levels(c) for c in encoder.categories_]
        rare = getattr(encoder, "infrequent_categories_", None) or [None] * len(categorical)
        cat["rare"] = [None if r is None else _json_levels(r) for r in rare]
        names += [str(n) for n in encoder.get_feature_names_out()]
    return num, cat, names


def _state(
    encoding: str, kinds: dict[str, str], dates: dict[str, list[str]], num: dict[str, Any], cat: dict[str, Any], names: list[str]
) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "encoding": encoding,
        "columns": [[c, k] for c, k in kinds.items()],
        "datetime_parts": dates,
        "numeric": num,
        "categorical": cat,
        # The float feature columns: index encoding keeps the categorical columns out of them (as level indices).
        "outputs": names[: len(names) - len(cat["columns"])] if encoding == "index" else names,
    }


def _column_transformer(
    numeric: list[str], categorical: list[str], encoding: str, impute: str, min_frequency: int | float | None
) -> ColumnTransformer:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        # An indicator column for each numeric column that had gaps in the training rows (features="missing-only").
        parts.append(("numeric", SimpleImputer(strategy=impute, add_indicator=True), numeric))
    if categorical:
        # A missing value seen in training is a level of its own; an unseen level is "unknown"
        # (all zeros one-hot, index 0 after the shift in transform); levels rarer than min_frequency merge into one.
        if encoding == "onehot":
            encoder: Any = OneHotEncoder(handle_unknown="ignore", min_frequency=min_frequency, sparse_output=False, dtype=np.float32)
        else:
            encoder = OrdinalEncoder(
                handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1, min_frequency=min_frequency
            )
        parts.append(("categorical", encoder, categorical))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0, verbose_feature_names_out=False)


def _columns(transformer: ColumnTransformer, name: str) -> list[str]:
    for n, _, cols in transformer.transformers_:
        if n == name:
            return list(cols)
    return []


def _levels(transformer: ColumnTransformer, column: str) -> list[Any]:
    enc = transformer.named_transformers_["categorical"]
    return _json_levels(enc.categories_[_columns(transformer, "categorical").index(column)])


def _json_levels(values: np.ndarray) -> list[str | None]:
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]


def _is_known(values: pd.Series, levels: list[str | None]) -> np.ndarray:
    seen = values.isin([v for v in levels if v is not None]).to_numpy()
    return seen | values.isna().to_numpy() if None in levels else seen


def example_rows(state: dict[str, Any], n: int = 3) -> pd.DataFrame:
    """`n` raw rows in the training columns, made from the stored encoding alone (no data file): medians and known
    levels, and a gap in every column of the last row. An input example for model registries, not real data."""
    import pandas as pd

    num = dict(zip(state["numeric"]["columns"], state["numeric"]["fill"], strict=True))
    cat = dict(zip(state["categorical"]["columns"], state["categorical"]["levels"], strict=True))
    last = n - 1
    cols: dict[str, pd.Series] = {}
    for name, kind in state["columns"]:
        if kind == "categorical":
            known = [v for v in cat[name] if v is not None] or [None]
            values: list[Any] = [known[i % len(known)] for i in range(last)] + [None]
        elif kind == "boolean":
            values = [i % 2 == 0 for i in range(last)] + [None]
        elif kind == "datetime":
            year, month = (round(num[f"{name}.{p}"]) for p in ("year", "month"))
            hour = round(num.get(f"{name}.hour", 0.0))
            values = [pd.Timestamp(year=year, month=month, day=1 + i, hour=hour) for i in range(last)] + [pd.NaT]
        else:
            values = [num[name]] * last + [float("nan")]
        cols[name] = pd.Series(values, dtype="datetime64[us]" if kind == "datetime" else object if kind != "numeric" else float)
    return pd.DataFrame(cols)


def report_unknown(unknown: dict[str, int], where: str) -> None:
    """One line per categorical column that met levels unseen in training (they were encoded as unknown)."""
    for c, k in unknown.items():
        print(f"note: {where}: column '{c}': {k} row(s) with a level unseen in training, encoded as unknown", file=sys.stderr)


# --- the csv/parquet sources -------------------------------------------------------------------------------------------


def table_fingerprint(config: Config) -> str:
    """File content hash plus every setting that changes the encoded table (the prepared-cache key)."""
    from taktstock.data.sources import _file_hash, _require_file

    d = config.data
    settings = {
        "version": STATE_VERSION,
        "format": config.data.source,
        "target": d.target,
        "features": d.features,
        "categorical": d.categorical,
        "numeric": d.numeric,
        "drop": d.drop,
        "encoding": d.categorical_encoding,
        "impute": d.numeric_impute,
        "min_frequency": d.min_frequency,
        "max_categories": d.max_categories,
        "datetime": d.datetime,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return f"table:{_file_hash(_require_file(config))}:{digest}"


@dataclass
class LoadedTable:
    """The feature table (rows with a target), its column kinds, and the targets as model labels."""

    table: pa.Table | None  # None once encoded (see table_encoder_fn)
    kinds: dict[str, str]
    y: np.ndarray
    class_names: list[str]


def load_table(config: Config) -> LoadedTable:
    """Read data.path, drop rows whose target is missing (with a warning), and turn the target into labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from taktstock.data.sources import _require_file, _targets

    path = _require_file(config)
    table = read_table(path, "parquet" if config.data.source == "parquet" else "csv")
    target = config.data.target
    if target is None or target not in table.column_names:
        raise ConfigError(f"data.target: column '{target}' not in {path} (columns: {', '.join(table.column_names)})")
    kinds = column_kinds(table, config, path)
    _check_levels(table, kinds, config.data.max_categories)
    y_col = table.column(target)
    keep = pc.is_valid(y_col)
    if pa.types.is_floating(y_col.type):
        keep = pc.and_(keep, pc.invert(pc.is_nan(y_col)))
    dropped = table.num_rows - int(pc.sum(keep).as_py() or 0)
    if dropped:
        print(f"warning: dropped {dropped} of {table.num_rows} rows of {path} whose target '{target}' is missing", file=sys.stderr)
        table, y_col = table.filter(keep), y_col.filter(keep)
    if table.num_rows == 0:
        raise ConfigError(f"data.path: {path} has no rows with a target '{target}'")
    if config.task == "regression":
        try:
            y = pc.cast(y_col, pa.float32()).to_numpy()
        except pa.ArrowInvalid:
            raise ConfigError(f"data.target: non-numeric target values for a regression loss ({config.loss.name})") from None
        classes: list[str] = []
    else:
        # Label ids from the distinct values only (fast on millions of rows), ordered like every other source's.
        encoded = pc.dictionary_encode(pc.cast(y_col, pa.string())).combine_chunks()
        distinct = [str(v) for v in encoded.dictionary.to_pylist()]
        ids, classes = _targets(distinct, config)
        y = ids[encoded.indices.to_numpy(zero_copy_only=False)]
    return LoadedTable(table.select(list(kinds)), kinds, y, classes)


def _check_levels(table: pa.Table, kinds: dict[str, str], limit: int) -> None:
    """A text column with more distinct values than `limit` is most likely an id, not a category."""
    import pyarrow.compute as pc

    for c, kind in kinds.items():
        if kind == "categorical":
            levels = pc.count_distinct(table.column(c), mode="all").as_py()
            if levels > limit:
                raise ConfigError(
                    f"data.max_categories: column '{c}' has {levels} levels (> {limit}); an id column? "
                    "list it in data.drop, or raise data.max_categories"
                )


def table_encoder_fn(loaded: LoadedTable, config: Config) -> Callable[[np.ndarray], tuple[np.ndarray, dict[str, Any]]]:
    """For `RawData.encode`: fit on the training rows, encode every row, return (float32 features, JSON state)."""

    def encode(train_rows: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        import pyarrow as pa

        # One use only: the table is released once encoded, making room for prepare's normalisation.
        table, loaded.table = loaded.table, None
        encoder = TableEncoder.fit(table, loaded.kinds, config, train_rows)
        encoded = encoder.transform(table, ConfigError)
        del table
        pa.default_memory_pool().release_unused()
        report_unknown(encoded.unknown, "val/test rows")
        return encoded.features, encoder.state()

    return encode
