"""Scoring one partition of new data: the run's preprocessing and one model, on a worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shardflow.tasks import backend
from shardflow.tasks.encode import Preprocessor
from shardflow.tasks.models import worker_threads
from shardflow.tasks.prepare import prepare_partition
from shardflow.tasks.targets import target_kind

PREDICTION = "prediction"
LABEL = "predicted_label"
QUARANTINE_DIR = "_quarantine"


def predict_partition(raw, spec, dimensions, *, preprocessor: Preprocessor, predictor, payload: dict,
                      output: str, index: int) -> dict:
    """Prepare, transform and score one input partition; write its predictions (and quarantine).

    ``predictor(payload, x, nthread)`` is the model family's prediction function
    (:mod:`shardflow.tasks.models`). Returns the rows scored and quarantined.
    """
    prepared = prepare_partition(raw, spec, dimensions)
    table = preprocessor.transform(prepared.features)
    x = backend.to_host_array(table[preprocessor.feature_names], np.float32)
    scores = predictor(payload, x, worker_threads())
    out = backend.to_pandas(table[list(preprocessor.keep_columns)]).reset_index(drop=True) \
        if preprocessor.keep_columns else pd.DataFrame(index=range(len(scores)))
    out[PREDICTION] = scores
    label = target_kind(preprocessor.task).label
    if label is not None:
        out[LABEL] = label(scores)
    part = f"part-{index:05d}.parquet"
    backend.write_parquet(out, str(Path(output) / part))
    if len(prepared.quarantine):
        backend.write_parquet(prepared.quarantine, str(Path(output) / QUARANTINE_DIR / part))
    return {"rows": len(out), "quarantined": len(prepared.quarantine)}
