"""An exported model (``shardflow export``) as a Python object: ONNX Runtime, no cluster.

``load_exported(path).predict(df)`` takes a pandas DataFrame of the run's input columns
(joined columns included: joins are not part of the export), computes the derived
features and datetime parts the run used, and returns the same columns as ``shardflow
predict``. Only ONNX Runtime, pandas and NumPy run; no Dask, no torch, no XGBoost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from shardflow.tasks.mlp_steps import ResidentState

#: File names inside an export directory.
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
METADATA_FILE = "metadata.json"


class ExportedModel:
    """An ONNX model of a run's whole scoring path and its metadata (see :func:`load_exported`)."""

    def __init__(self, model: bytes, metadata: dict, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.metadata = metadata
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def inputs(self, frame: pd.DataFrame) -> dict:
        """The model's named inputs from a frame of input columns (numbers as double,
        categories as strings, ``""`` for missing)."""
        frame = _typed(frame.reset_index(drop=True), self.metadata)
        derived = self.metadata["derived"]
        needed = {i["name"]: i for i in self.metadata["inputs"]}
        out = {}
        for name, spec in needed.items():
            if name in frame.columns:
                column = frame[name]
            elif name in derived:
                from shardflow.tasks.expressions import evaluate, parse_expression

                column = evaluate(parse_expression(derived[name], f"features.derived.{name}"), frame)
            elif spec.get("datetime"):
                from shardflow.tasks.prepare import datetime_part

                from shardflow.tasks.backend import to_datetime

                source, part = spec["datetime"]
                column = datetime_part(to_datetime(frame[source]), part)
            else:
                raise KeyError(f"column {name!r} is missing (the model's inputs: {', '.join(needed)})")
            if spec["type"] == "string":
                text = column.astype("string") if not pd.api.types.is_string_dtype(column.dtype) else column
                out[name] = text.fillna("").to_numpy(dtype=object)
            else:
                values = pd.to_numeric(column, errors="coerce") if column.dtype.kind not in "biuf" else column
                out[name] = np.asarray(values, dtype=np.float64)
        return out

    def run(self, frame: pd.DataFrame) -> dict:
        """The model's raw outputs (``probability``/``probabilities``, ``label``, ``prediction``)."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, self.inputs(frame))))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The columns ``shardflow predict`` writes: ``prediction`` and/or ``predicted_label``,
        and ``probability_<label>`` per class for a multi-class target."""
        from shardflow.tasks.labels import probability_column
        from shardflow.tasks.scoring import LABEL, PREDICTION

        out = self.run(frame)
        columns = {}
        if "prediction" in out:
            columns[PREDICTION] = out["prediction"]
        if "probability" in out:
            columns[PREDICTION] = out["probability"]
        if "label" in out:
            columns[LABEL] = out["label"]
        if "probabilities" in out:
            for i, key in enumerate(self.metadata["classes"]):
                columns[probability_column(key)] = out["probabilities"][:, i]
        return pd.DataFrame(columns, index=frame.index)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities ``[N, K]`` (a binary target: both classes' columns)."""
        out = self.run(frame)
        if "probabilities" in out:
            return out["probabilities"]
        if "probability" in out:
            return np.column_stack([1 - out["probability"], out["probability"]])
        raise TypeError("a regression model has no probabilities; use predict")


def _typed(frame: pd.DataFrame, metadata: dict) -> pd.DataFrame:
    """Text columns that hold only numbers (a CSV read as strings, a JSON payload) as numbers,
    so that derived expressions compute on them as in the ETL; the model's string inputs stay
    text."""
    strings = {i["name"] for i in metadata["inputs"] if i["type"] == "string"}
    converted = {}
    for col in frame.columns:
        if col in strings or frame[col].dtype.kind in "biufM":
            continue
        numbers = pd.to_numeric(frame[col], errors="coerce")
        if numbers.notna().sum() == frame[col].notna().sum() and frame[col].notna().any():
            converted[col] = numbers.astype("float64")
    return frame.assign(**converted) if converted else frame


def load_exported(path, precision: str = "fp32", threads: int | None = None) -> ExportedModel:
    """An exported model, ready to score pandas DataFrames with ONNX Runtime.

    Parameters
    ----------
    path : path
        The directory ``shardflow export`` wrote.
    precision : {"fp32", "int8"}
        ``int8``: the dynamically quantized model (exported with ``--quantize int8``).

    Examples
    --------
    >>> model = load_exported("exports/mlp")  # doctest: +SKIP
    >>> model.predict(pd.read_csv("new.csv")).head()  # doctest: +SKIP
    """
    path = Path(path)
    metadata = json.loads((path / METADATA_FILE).read_text())
    name = {"fp32": MODEL_FILE, "int8": INT8_FILE}[precision]
    model = (path / name).read_bytes()
    expected = metadata.get("files", {}).get(name)
    # A check against corruption and mixed-up files, not a signature: metadata.json is not signed.
    if expected is None or hashlib.sha256(model).hexdigest() != expected:
        raise ValueError(f"{path / name}: its SHA-256 is not the one {METADATA_FILE} records; export the run again")
    return ExportedModel(model, metadata, threads)


class ExportedSessions(ResidentState):
    """One ONNX Runtime session per worker and model, reused across partitions (kept in the
    worker's resident state, keyed by the model's SHA-256)."""

    name = "shardflow-onnx-sessions"

    def get(self, model: bytes, metadata: dict, threads: int | None) -> ExportedModel:
        key = hashlib.sha256(model).hexdigest()
        if key not in self.states:
            self.states[key] = ExportedModel(model, metadata, threads)
        return self.states[key]


def worker_session(model: bytes, metadata: dict) -> ExportedModel:
    """This worker's session for ``model`` (created on first use)."""
    from distributed import get_worker

    # One thread per session: the worker runs one task per thread, each with its own session call.
    plugin = get_worker().plugins.get(ExportedSessions.name)
    if plugin is None:  # a worker that joined after the plugin was registered
        return ExportedModel(model, metadata, 1)
    return plugin.get(model, metadata, 1)
