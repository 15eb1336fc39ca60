"""An exported model (``shardflow export``) as a Python object: ONNX Runtime, no cluster.

``load_exported(path).predict(df)`` takes a pandas DataFrame of the run's input columns
(the fact rows: the graph joins its dimension tables itself, unless ``metadata.json``'s
joins say ``in_graph: false``), makes the join keys comparable, computes the datetime parts
(and any derived feature the graph could not compute) and returns the same columns as
``shardflow predict``. Only ONNX Runtime, pandas and NumPy run (and the ``onnx`` package reads the model's
structure to check what files it would read); no Dask, no torch, no XGBoost.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from shardflow.core.errors import ShardflowError

#: File names inside an export directory.
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
METADATA_FILE = "metadata.json"


class ExportedModelError(ShardflowError, ValueError):
    """An export directory or ONNX model that is not loaded: it would read other files, or its
    files are not the ones ``metadata.json`` records (the message names the file)."""


class ExportedModel:
    """An ONNX model of a run's whole scoring path and its metadata (see :func:`load_exported`).

    ``model`` holds all its data: a tensor whose data lies in another file is refused (given as
    bytes, ONNX Runtime would look for that file relative to the working directory).
    """

    def __init__(self, model: bytes, metadata: dict, threads: int | None = None):
        import onnxruntime as ort

        for tensor in _tensors(_parse(model, "the ONNX model")):
            if _is_external(tensor):
                raise ExportedModelError(
                    f"the ONNX model's tensor {tensor.name!r} keeps its data in another file "
                    f"({_external_entries(tensor).get('location', '')!r}); refused: a model "
                    "given as bytes holds all its data (load an export with load_exported)"
                )
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
            source = spec.get("column", name)  # an input holding a column in a second type
            if source in frame.columns:
                column = frame[source]
            elif name in derived:
                from shardflow.tasks.expression_kinds import check_kinds
                from shardflow.tasks.expressions import evaluate, parse_expression

                key = f"features.derived.{name}"
                expression = parse_expression(derived[name], key)
                # metadata.json is untrusted, and the caller's frame has its own dtypes: an int
                # column times a text one repeats the text (the ETL refused it from its kinds).
                check_kinds(expression, _frame_kinds(frame, expression.names), key)
                column = evaluate(expression, frame)
            elif spec.get("datetime"):
                from shardflow.core.backend import to_datetime
                from shardflow.tasks.prepare import datetime_part

                source, part = spec["datetime"]
                column = datetime_part(to_datetime(frame[source]), part)
            else:
                raise KeyError(f"column {name!r} is missing (the model's inputs: {', '.join(needed)})")
            if spec.get("key"):
                out[name] = key_feed(column, spec["key"])
            elif spec["type"] == "string":
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
        from shardflow.tasks.labels import LABEL, PREDICTION, probability_column

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
    # Keys are compared as the join compares them (an integer past 2**53 stays exact).
    strings = {i["name"] for i in metadata["inputs"] if i["type"] == "string" or i.get("key")}
    converted = {}
    for col in frame.columns:
        if col in strings or frame[col].dtype.kind in "biufM":
            continue
        numbers = pd.to_numeric(frame[col], errors="coerce")
        if numbers.notna().sum() == frame[col].notna().sum() and frame[col].notna().any():
            converted[col] = numbers.astype("float64")
    return frame.assign(**converted) if converted else frame


def key_feed(values: pd.Series, kind: str) -> np.ndarray:
    """A join key column as the exported graph takes it (see ``JoinSpec.key_kinds``): text
    (``""``: missing), a double, or an ``int64`` (integers; datetimes as UTC microseconds),
    whose smallest value is missing. The same comparable form as the ETL's join.

    Examples
    --------
    >>> key_feed(pd.Series(["7", "7.0", None]), "integer").tolist()
    [7, 7, -9223372036854775808]
    >>> key_feed(pd.Series(["2013-01-01T00:00:01Z", "soon"]), "datetime").tolist()
    [1356998401000000, -9223372036854775808]
    """
    from shardflow.tasks.onnx_inputs import MISSING_INTEGER
    from shardflow.tasks.prepare import join_key

    values = values.reset_index(drop=True)
    if kind == "string":
        return join_key(values, kind).fillna("").astype(object).to_numpy()
    if kind == "number":
        return np.asarray(join_key(values, kind), dtype=np.float64)
    if kind == "integer":
        return join_key(values, kind).fillna(MISSING_INTEGER).to_numpy(dtype=np.int64)
    return join_key(values, kind).to_numpy().astype("datetime64[us]").astype(np.int64)


def _frame_kinds(frame: pd.DataFrame, columns) -> dict:
    """The kinds (see :func:`shardflow.tasks.expressions.check_kinds`) of ``frame``'s ``columns``
    after :func:`_typed`: an object column that still holds a value is text (or lists)."""
    kinds = {}
    for col in columns:
        if col not in frame.columns:
            continue
        values = frame[col]
        if values.dtype.kind == "b":
            kinds[col] = "boolean"
        elif values.dtype.kind in "iuf":
            kinds[col] = "number"
        elif values.dtype.kind in "Mm":
            kinds[col] = "datetime"
        else:
            present = values.dropna()
            if len(present):
                first = present.iloc[0]
                kinds[col] = "nested" if isinstance(first, (list, tuple, dict, np.ndarray)) else "text"
    return kinds


def load_exported(path, precision: str = "fp32", threads: int | None = None) -> ExportedModel:
    """An exported model, ready to score pandas DataFrames with ONNX Runtime.

    An export directory is untrusted: each file read (``metadata.json``, the model, the
    external data of its tensors) must lie in the directory (a link may not lead out of it);
    the model and its external data must have the SHA-256 that ``metadata.json`` records
    before any byte of them reaches ONNX Runtime; a tensor's external data must be a file
    of the directory named by a relative path without ``..``. ONNX Runtime gets the model
    with that data inlined, never a path.

    Parameters
    ----------
    path : path
        The directory ``shardflow export`` wrote.
    precision : {"fp32", "int8"}
        ``int8``: the dynamically quantized model (exported with ``--quantize int8``).

    Raises
    ------
    ExportedModelError
        One line naming the file that is refused, and why.

    Examples
    --------
    >>> model = load_exported("exports/mlp")  # doctest: +SKIP
    >>> model.predict(pd.read_csv("new.csv")).head()  # doctest: +SKIP
    """
    root = Path(path).expanduser().resolve()
    try:
        metadata = json.loads(_read_inside(root, METADATA_FILE))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportedModelError(f"{root / METADATA_FILE}: not JSON ({err}); export the run again") from None
    hashes = metadata.get("files") if isinstance(metadata, dict) else None
    if not isinstance(hashes, dict):
        raise ExportedModelError(
            f"{root / METADATA_FILE}: no 'files' mapping of names to SHA-256; export the run again"
        )
    name = {"fp32": MODEL_FILE, "int8": INT8_FILE}[precision]
    model = _read_verified(root, name, hashes)
    return ExportedModel(_inline_external_data(model, root, name, hashes), metadata, threads)


def _read_inside(root: Path, name: str) -> bytes:
    """The bytes of ``root / name``, refused if it (through a link) lies outside ``root``."""
    target = root / name
    resolved = target.resolve()
    if not resolved.is_relative_to(root):
        raise ExportedModelError(
            f"{target}: a link to {resolved}, outside the export directory; refused: "
            "copy the file into the export (or export the run again)"
        )
    return resolved.read_bytes()


def _read_verified(root: Path, name: str, hashes: dict) -> bytes:
    """The bytes of the export's file ``name``, refused unless their SHA-256 is the one recorded."""
    data = _read_inside(root, name)
    # A check against tampering with one file, corruption and mixed-up files, not a signature:
    # metadata.json itself is not signed.
    if hashes.get(name) is None or hashlib.sha256(data).hexdigest() != hashes[name]:
        raise ExportedModelError(
            f"{root / name}: its SHA-256 is not the one {METADATA_FILE} records; export the run again"
        )
    return data


def _inline_external_data(model: bytes, root: Path, name: str, hashes: dict) -> bytes:
    """``model`` with the external data of its tensors read into it, each location checked
    (relative, no ``..``, inside ``root`` through links) and each file's SHA-256 verified first."""
    proto = _parse(model, str(root / name))
    files, changed = {}, False
    for tensor in _tensors(proto):
        if not _is_external(tensor):
            continue
        entries = _external_entries(tensor)
        location = entries.get("location", "")
        problem = _location_problem(location, root)
        if problem:
            raise ExportedModelError(
                f"{root / name}: tensor {tensor.name!r} reads its data from {location!r}, "
                f"{problem}; refused: export the run again"
            )
        if location not in files:
            files[location] = _read_verified(root, location, hashes)
        data = files[location]
        try:
            offset = int(entries.get("offset", 0))
            length = int(entries["length"]) if "length" in entries else len(data) - offset
        except ValueError:
            offset = length = -1
        if offset < 0 or length < 0 or offset + length > len(data):
            raise ExportedModelError(
                f"{root / name}: tensor {tensor.name!r} reads bytes outside {location!r} "
                "(offset, length); refused: export the run again"
            )
        tensor.raw_data = data[offset : offset + length]
        del tensor.external_data[:]
        tensor.data_location = tensor.DEFAULT
        changed = True
    return proto.SerializeToString() if changed else model


def _location_problem(location: str, root: Path) -> str | None:
    """Why an external data ``location`` may not be read (None: a file of ``root``). Only the
    name is looked at, and links resolved: nothing is opened."""
    if not location:
        return "which names no file"
    if (
        PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive
        or location.startswith(("/", "\\"))
    ):
        return "an absolute path"
    if ".." in re.split(r"[\\/]", location):
        return "a path with '..'"
    if not (root / location).resolve().is_relative_to(root):
        return "which (through a link) lies outside the export directory"
    return None


def _parse(model: bytes, what: str):
    """``model`` as an ``onnx.ModelProto`` (external data not loaded)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.ModelProto.FromString(model)
    except (DecodeError, RecursionError) as err:
        raise ExportedModelError(f"{what}: not an ONNX model ({type(err).__name__}); export the run again") from None


def _tensors(message):
    """Every ``TensorProto`` in an ONNX message: initializers, sparse ones, constants in node
    attributes, subgraphs and functions alike (every field is visited, none named)."""
    from onnx import TensorProto

    if isinstance(message, TensorProto):
        yield message
        return
    for _, value in message.ListFields():
        if hasattr(value, "ListFields"):
            yield from _tensors(value)
        elif not isinstance(value, (str, bytes, int, float)):  # a repeated field: messages or plain values
            for item in value:
                if hasattr(item, "ListFields"):
                    yield from _tensors(item)


def _is_external(tensor) -> bool:
    return tensor.data_location == tensor.EXTERNAL or len(tensor.external_data) > 0


def _external_entries(tensor) -> dict:
    return {entry.key: entry.value for entry in tensor.external_data}
