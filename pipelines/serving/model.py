"""A trained model as a Python object: the run's preprocessing and one model family, callable
on a pandas DataFrame (in the process) or a Dask DataFrame (on the cluster)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from shardflow.core.errors import InputError, ShardflowError
from shardflow.core.storage import location
from shardflow.pipelines.records import trained_models
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.setup.config import load_config

logger = logging.getLogger("shardflow.model")


class TrainedModel:
    """One model family of a finished run with the run's fitted preprocessing.

    ``predict`` takes rows with the run's input columns (the target may be absent), joins
    the run's dimension tables, derives and encodes the features exactly as the ETL did,
    and scores them: a pandas DataFrame in, a pandas DataFrame out, aligned on the input's
    index; a Dask DataFrame in, a lazy Dask DataFrame out, scored partition by partition on
    the cluster. Rows the ETL would quarantine (a value outside ``clean.valid_ranges``, an
    unparsable date) get no prediction (missing values) and a warning.

    Build it with :func:`load_model`; every file it reads is checked against the run's
    manifest first. It holds the model's own bytes (UBJSON, weights), never a pickle.

    Examples
    --------
    >>> model = load_model("shardflow-work/runs/20261122-101500-ab12cd")  # doctest: +SKIP
    >>> model.predict(new_rows)  # doctest: +SKIP
       trip_id  prediction predicted_label
    0        7    0.231208           False
    """

    def __init__(self, run_dir, name: str | None = None, storage_options: dict | None = None):
        from shardflow.pipelines.families.registry import FAMILIES
        from shardflow.pipelines.records.artifacts import check_dimension_tables

        self.run_dir = location(run_dir, storage_options)
        files = trained_models.scoring_files(self.run_dir, name, option="load_model")
        self.name = files.model
        self.preprocessor, self._payload = files.preprocessor, files.payload
        self._predictor = FAMILIES[files.model].predictor()
        # The caller's storage options (for the join tables), never the run's.
        self._config = load_config(files.config_path, ["storage_options={}", "cluster={}"])
        self._config.storage_options = dict(storage_options or {})
        check_dimension_tables(self._config, files.manifest)
        self._dimensions = {}  # per input columns: a dimension column clashing with one is renamed
        self.task = self.preprocessor.task

    def __repr__(self) -> str:
        return f"TrainedModel({self.name!r}, task={self.task!r}, run={str(self.run_dir)!r})"

    def _repr_html_(self) -> str:
        """What the model is, as a table in a notebook."""
        from shardflow.pipelines.families.specs import label
        from shardflow.pipelines.interface.report_html import kv_table

        prep = self.preprocessor
        return "<p><b>shardflow TrainedModel</b></p>" + kv_table(
            [
                ("model", f"{label(self.name)} ({self.name})"),
                ("task", self.task),
                ("target", prep.target),
                ("classes", ", ".join(map(str, self.classes))),
                ("features", f"{len(prep.numeric)} numeric, {len(prep.categorical)} categorical"),
                ("run", str(self.run_dir)),
            ]
        )

    def _explainer(self):
        from shardflow.pipelines.families.registry import FAMILIES

        found = FAMILIES[self.name].explain
        if found is None:
            raise ShardflowError(
                f"predict(explain=True): {self.name!r} has no exact contributions (XGBoost models only); its "
                f"permutation importance is in {RunDir(self.run_dir).explanations}"
            )
        return found

    @property
    def classes(self) -> list:
        """The class labels' keys, in the order of ``predict_proba``'s columns (classification)."""
        return list(self.preprocessor.classes)

    def predict(self, frame, explain: bool = False):
        """Predictions for ``frame``'s rows: the columns ``shardflow predict`` writes (the
        run's ``keep_columns``, ``prediction`` and/or ``predicted_label``, and
        ``probability_<label>`` for a multi-class target).

        Parameters
        ----------
        frame : pandas.DataFrame or dask.dataframe.DataFrame
        explain : bool
            Add each row's exact feature contributions, as ``shardflow predict --explain``
            (XGBoost models; a pandas frame).

        Returns
        -------
        pandas.DataFrame or dask.dataframe.DataFrame
        """
        import dask.dataframe as dd

        if isinstance(frame, dd.DataFrame):
            import dask

            meta = self._score(frame._meta.iloc[:0], warn=False)
            # The model goes into the graph once, as one task every partition's scoring depends on.
            model = dask.delayed(self, pure=True, name=f"model-{self.name}-{dask.base.tokenize(str(self.run_dir))}")
            return frame.map_partitions(_score_partition, model, meta=meta)
        if not isinstance(frame, pd.DataFrame):
            raise ShardflowError(f"predict: expected a pandas or Dask DataFrame, got {type(frame).__name__}")
        return self._score(frame, warn=True, explain=explain)

    def predict_proba(self, frame):
        """Class probabilities, one column per class (classification only), as ``predict``
        aligns them: ``probability_<label>``; for a binary target both classes."""
        from shardflow.tasks.labels import PREDICTION, probability_column
        from shardflow.tasks.targets import target_kind

        kind = target_kind(self.task)
        if not kind.is_classification:
            raise ShardflowError(f"predict_proba: model {self.name!r} predicts a number ({self.task}); use predict")
        out = self.predict(frame)
        columns = [probability_column(key) for key in self.classes]
        if kind.multi_output:
            return out[columns]
        negative, positive = columns
        return (
            out[[PREDICTION]]
            .rename(columns={PREDICTION: positive})
            .assign(**{negative: lambda f: 1.0 - f[positive]})[[negative, positive]]
        )

    def _score(self, frame: pd.DataFrame, warn: bool, explain: bool = False) -> pd.DataFrame:
        from shardflow.pipelines.setup.dimensions import dimension_frames, load_dimensions
        from shardflow.pipelines.setup.read import table_spec
        from shardflow.tasks.schema import REASON_COLUMN
        from shardflow.tasks.scoring import score_rows

        index = frame.index
        frame = frame.reset_index(drop=True)  # rows by position: the input's index may repeat labels
        frame.columns = [str(c) for c in frame.columns]
        source = _FrameSource(_schema(frame))
        columns = tuple((name, str(kind)) for name, kind in source.schema.items())
        if columns not in self._dimensions:  # names and types decide joins and clashes
            self._dimensions[columns] = load_dimensions(self._config, source)
        dimensions = self._dimensions[columns]
        spec = table_spec(self._config, source, dimensions, for_prediction=True)
        out, prepared = score_rows(
            frame,
            spec,
            dimension_frames(dimensions, "pandas"),
            preprocessor=self.preprocessor,
            predictor=self._predictor,
            payload=self._payload,
            explain=self._explainer() if explain else None,
        )
        if warn and len(prepared.quarantine):
            reasons = prepared.quarantine[REASON_COLUMN].value_counts()
            logger.warning(
                "%s: %d row(s) have no prediction (quarantined as the ETL would: %s)",
                self.name,
                len(prepared.quarantine),
                ", ".join(f"{r}: {n}" for r, n in reasons.items()),
            )
        # Every row of the input, by position; a quarantined row's values are missing. Nullable
        # dtypes, so a column's dtype does not depend on whether a row was quarantined.
        positions = np.asarray(prepared.features.index, dtype=np.int64)
        full = pd.DataFrame({col: _nullable(out[col]).array for col in out.columns}, index=positions)
        full = full.reindex(np.arange(len(frame)))
        full.index = index
        return full


def _nullable(column: pd.Series) -> pd.Series:
    """``column`` with a dtype that can hold a missing value and is the same for every
    partition: floats stay float64 (NaN), booleans ``boolean``, integers ``Int64``, the rest
    ``string``."""
    kind = column.dtype.kind
    if kind == "f":
        return column.reset_index(drop=True)
    dtype = {"b": "boolean", "i": "Int64", "u": "Int64"}.get(kind, "string")
    return column.astype(dtype).reset_index(drop=True)


def _score_partition(frame: pd.DataFrame, model: TrainedModel) -> pd.DataFrame:
    return model._score(frame, warn=True)


class _FrameSource:
    """What the spec and the dimension tables need to know of an in-memory input: its
    columns and their Arrow types, checked as a Parquet file's are (a frame has types)."""

    format = "parquet"
    files = ("the DataFrame",)

    def __init__(self, schema: dict):
        self.schema = schema


def _schema(frame: pd.DataFrame) -> dict:
    import warnings

    if frame.columns.duplicated().any():
        twice = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise InputError(
            f"predict: column(s) {', '.join(map(repr, twice))} appear more than once in the frame; "
            "give each column once"
        )
    try:
        with warnings.catch_warnings():  # pyarrow reads a time-zone column through .values, which pandas 3.1 deprecates
            warnings.filterwarnings("ignore", message="Series.values returning an ndarray that drops timezone")
            return dict(zip(frame.columns, pa.Schema.from_pandas(frame, preserve_index=False).types))
    except ARROW_REFUSALS as err:
        raise table_column_error(frame, err, "predict") from None


#: What Arrow raises for a frame it cannot hold as a table (a dict among text, a complex
#: number, an integer past 64 bits).
ARROW_REFUSALS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError)


def table_column_error(frame: pd.DataFrame, err: Exception, where: str) -> InputError:
    """The error for a frame Arrow cannot read as a table, naming the column at fault."""
    from shardflow.core.backend import require_scalars

    for name in frame.columns:
        column = frame[name]
        require_scalars(column, name)  # a dict or list among the values: said as such
        try:
            pa.Schema.from_pandas(column.to_frame(), preserve_index=False)
        except ARROW_REFUSALS as column_err:
            return InputError(f"{where}: column {name!r} cannot be read as a table column ({column_err})")
    return InputError(f"{where}: a column cannot be read as a table column ({err})")


def load_model(run_dir, name: str | None = None, storage_options: dict | None = None) -> TrainedModel:
    """A finished run's model as an object with ``predict`` and ``predict_proba``.

    Parameters
    ----------
    run_dir : path
        A run directory with completed ``etl`` and ``train`` stages.
    name : str, optional
        Model family (``train.models``); default the run's best on validation.
    storage_options : dict, optional
        Options of the object store's file system, for a run in one (``s3://...``).

    Raises
    ------
    ShardflowError
        Not a finished run, a model the run did not train, or a file that differs from
        what the run's manifest recorded.

    Examples
    --------
    >>> import shardflow
    >>> model = shardflow.load_model("shardflow-work/runs/20261122-101500-ab12cd", "xgboost")  # doctest: +SKIP
    >>> model.predict_proba(frame)  # doctest: +SKIP
    """
    return TrainedModel(run_dir, name, storage_options)
