"""Scoring one partition of new data: the run's preprocessing and one model, on a worker."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shardflow.core import backend
from shardflow.core.storage import location
from shardflow.core.threads import worker_threads
from shardflow.tasks.drift import bin_counts
from shardflow.tasks.encode import Preprocessor
from shardflow.tasks.labels import LABEL, PREDICTION, decode_labels, probability_column
from shardflow.tasks.prepare import prepare_partition
from shardflow.tasks.targets import target_kind, target_transform
from shardflow.tasks.worker_state import worker_session

QUARANTINE_DIR = "_quarantine"


def score_rows(raw, spec, dimensions, *, preprocessor: Preprocessor, predictor, payload: dict, explain=None) -> tuple:
    """Prepare, transform and score rows as the ETL prepared the training rows.

    ``predictor(payload, x, nthread)`` is the model family's prediction function
    (:mod:`shardflow.tasks.models`); ``explain(payload, x, nthread)``, if given, its exact
    feature contributions (:func:`contribution_columns`). Returns ``(out, prepared)``: the
    run's ``keep_columns`` and :func:`prediction_columns` of the rows kept (a fresh index),
    and the :class:`~shardflow.tasks.prepare.PreparedPartition` (its features' index says
    which input rows were kept; its quarantine, which were not).
    """
    prepared = prepare_partition(raw, spec, dimensions)
    table = preprocessor.transform(prepared.features)
    x = backend.to_host_array(table[preprocessor.feature_names], np.float32)
    scores = predictor(payload, x, worker_threads())
    kept = [c for c in preprocessor.keep_columns if c in table.columns]  # new rows may lack some
    out = backend.to_pandas(table[kept]).reset_index(drop=True) if kept else pd.DataFrame(index=range(len(scores)))
    out = out.assign(**prediction_columns(scores, preprocessor))
    if explain is not None:
        out = out.assign(**contribution_columns(explain(payload, x, worker_threads()), preprocessor.feature_names))
    return out, prepared


#: The prefix of ``predict --explain``'s columns: ``contribution_<feature>`` and ``contribution_bias``.
CONTRIBUTION = "contribution_"


def contribution_columns(contributions: np.ndarray, features: list) -> dict:
    """One column per feature and one for the bias, in the model's margin (log-odds, class
    score, or the transformed value): per row they add up to it. A multi-class model's are
    toward each row's highest-scoring class.

    Examples
    --------
    >>> sorted(contribution_columns(np.array([[0.5, -0.25, 1.0]]), ["a", "b"]).items())
    [('contribution_a', array([0.5])), ('contribution_b', array([-0.25])), ('contribution_bias', array([1.]))]
    """
    if contributions.ndim == 3:  # (rows, classes, features + 1)
        top = np.argmax(contributions.sum(axis=2), axis=1)
        contributions = contributions[np.arange(len(contributions)), top]
    names = [*(f"{CONTRIBUTION}{name}" for name in features), f"{CONTRIBUTION}bias"]
    return {name: contributions[:, j] for j, name in enumerate(names)}


def predict_partition(
    raw,
    spec,
    dimensions,
    *,
    preprocessor: Preprocessor,
    predictor,
    payload: dict,
    output: str,
    index: int,
    drift_layout: dict | None = None,
    explain=None,
) -> dict:
    """Score one input partition (:func:`score_rows`, with ``explain`` its contributions);
    write its predictions (and quarantine). Returns the rows scored and quarantined, and with
    ``drift_layout`` the prepared rows counted into the drift reference's bins
    (:func:`~shardflow.tasks.drift.bin_counts`)."""
    out, prepared = score_rows(
        raw, spec, dimensions, preprocessor=preprocessor, predictor=predictor, payload=payload, explain=explain
    )
    return _written(out, prepared, output, index, drift_layout)


def _written(out, prepared, output: str, index: int, drift_layout: dict | None) -> dict:
    """Write one partition's predictions and quarantine; what the caller is told of them."""
    part = f"part-{index:05d}.parquet"
    backend.write_parquet(out, location(output) / part)
    if len(prepared.quarantine):
        backend.write_parquet(prepared.quarantine, location(output) / QUARANTINE_DIR / part)
    written = {"rows": len(out), "quarantined": len(prepared.quarantine)}
    if drift_layout is not None:
        written["drift"] = bin_counts(prepared.features, drift_layout)
    return written


def score_exported_partition(
    raw, spec, dimensions, *, exported: tuple, keep_columns, output: str, index: int, drift_layout: dict | None = None
) -> dict:
    """Prepare one input partition and score it with an exported ONNX model (``exported``:
    its bytes and metadata; this worker's ONNX Runtime session, reused across partitions);
    write its predictions and quarantine (see :func:`predict_partition`)."""
    model, metadata = exported
    raw = raw.reset_index(drop=True)  # the prepared rows' index: their positions in raw
    prepared = prepare_partition(raw, spec, dimensions)
    features = backend.to_pandas(prepared.features)
    rows = with_input_columns(features, backend.to_pandas(raw)).reset_index(drop=True)
    out = rows[list(keep_columns)].copy() if keep_columns else pd.DataFrame(index=rows.index)
    scores = worker_session(model, metadata).predict(rows)
    return _written(pd.concat([out, scores], axis=1), prepared, output, index, drift_layout)


def with_input_columns(features: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """``features`` (prepared from ``raw``, whose index is its rows' positions) with the raw
    columns it lacks: what an exported graph reads from the fact rows itself (join keys, the
    columns its derived features read)."""
    missing = [col for col in raw.columns if col not in features.columns]
    return pd.concat([features, raw.loc[features.index, missing]], axis=1) if missing else features


def prediction_columns(scores: np.ndarray, preprocessor: Preprocessor) -> dict:
    """The output columns of a model's scores: for a binary target ``prediction`` (the
    positive class's probability) and ``predicted_label``; for a multi-class one
    ``predicted_label`` and ``probability_<label>`` per class; for regression
    ``prediction`` in the target's units. Labels are spelled as in the input.

    Examples
    --------
    >>> pre = Preprocessor([], [], [], [], [], [], {}, "y", "multiclass", classes=["a", "b", "c"],
    ...                    label_type="string")
    >>> cols = prediction_columns(np.array([[0.2, 0.5, 0.3]]), pre)
    >>> list(cols), cols[LABEL].tolist()
    (['predicted_label', 'probability_a', 'probability_b', 'probability_c'], ['b'])
    """
    kind = target_kind(preprocessor.task)
    if not kind.is_classification:
        return {PREDICTION: target_transform(preprocessor.target_transform).inverse(scores)}
    labels = decode_labels(kind.codes(scores), preprocessor.classes, preprocessor.label_type)
    if not kind.multi_output:
        return {PREDICTION: scores, LABEL: labels}
    probabilities = np.asarray(scores).reshape(len(labels), len(preprocessor.classes))
    return {
        LABEL: labels,
        **{probability_column(key): probabilities[:, i] for i, key in enumerate(preprocessor.classes)},
    }
