"""Checkpoints of the global models: when to write them, and the MLP's epoch state (XGBoost's
training callback is :mod:`~shardflow.pipelines.training.xgboost_checkpoint`, which loads XGBoost).

They run inside the global model's training task on every worker; only rank 0 writes. A checkpoint is
the model so far (UBJSON) plus a JSON state: rounds done, the evaluation history, the
early-stopping state and the time per round. Resuming loads both, so a resumed run
makes the same decisions, and the same trees, as one that was never interrupted.

When to write is a matter of training time (:func:`checkpoint_due`): a checkpoint costs
the same whatever the round's length, so a short model writes only its final state and a
long one loses at most ``train.checkpoint_seconds`` of work.
"""

from __future__ import annotations

import json
import logging

from dask.base import tokenize

from shardflow.pipelines.records.rundir import RunDir, write_bytes_atomic, write_text_atomic

logger = logging.getLogger("shardflow.train")


def checkpoint_due(since_last: float, seconds: float | None) -> bool:
    """Whether a checkpoint is due ``since_last`` seconds of training after the last one;
    ``seconds`` 0: after every round or evaluation, None: never (only the final state).

    Examples
    --------
    >>> checkpoint_due(0.01, 0), checkpoint_due(59.9, 60), checkpoint_due(60.0, 60), checkpoint_due(1e9, None)
    (True, False, True, False)
    """
    return seconds is not None and since_last >= seconds


# ----------------------------------------------------------------------------- data-parallel MLP


#: The MLP checkpoint's weight files (``RunDir.checkpoint_file`` names) and their state keys.
_WEIGHTS = (("params", "params"), ("best", "best_params"))


def mlp_checkpoint_token(data, cfg, seed) -> str:
    return tokenize(data.token, cfg, seed)[:16]


def read_mlp_checkpoint(ckpt, data, cfg, seed):

    if ckpt is None or not RunDir.checkpoint_file(ckpt, "state").exists():
        return None
    meta = json.loads(RunDir.checkpoint_file(ckpt, "state").read_text())
    if meta.get("token") != mlp_checkpoint_token(data, cfg, seed):
        logger.info("mlp: the checkpoint in %s was written for other data or options; not resumed", ckpt)
        return None
    import hashlib

    from shardflow.pipelines.records.artifacts import weights_from_bytes

    files = {key: RunDir.checkpoint_file(ckpt, what) for what, key in _WEIGHTS}
    if not all(path.exists() for path in files.values()):
        logger.info("mlp: the checkpoint in %s has no weights; not resumed", ckpt)
        return None
    contents = {key: path.read_bytes() for key, path in files.items()}  # read once: checked, then loaded
    recorded = meta.pop("sha256", None)
    if recorded is not None and any(hashlib.sha256(contents[key]).hexdigest() != recorded.get(key) for key in files):
        # Stopped between the weights' write and the state's: the weights are a later
        # epoch's than the state says; resuming from them would not be the same training.
        logger.info("mlp: the checkpoint in %s is incomplete (stopped while written); not resumed", ckpt)
        return None
    for key, content in contents.items():
        meta[key] = weights_from_bytes(content, files[key])
    return meta


def write_mlp_checkpoint(ckpt, state, token) -> None:

    import hashlib

    from shardflow.pipelines.records.artifacts import weights_bytes

    ckpt.mkdir(parents=True, exist_ok=True)
    digests = {}
    for what, key in _WEIGHTS:
        payload = weights_bytes(state[key])
        write_bytes_atomic(RunDir.checkpoint_file(ckpt, what), payload)
        digests[key] = hashlib.sha256(payload).hexdigest()
    meta = {k: v for k, v in state.items() if k not in ("params", "best_params")}
    meta["token"], meta["sha256"] = token, digests
    # last: the weights it names are in place
    write_text_atomic(RunDir.checkpoint_file(ckpt, "state"), json.dumps(meta, default=float))
