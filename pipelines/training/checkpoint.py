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

from dask.base import tokenize

from shardflow.pipelines.records.rundir import RunDir, write_bytes_atomic, write_text_atomic


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


def mlp_checkpoint_token(data, cfg, seed) -> str:
    return tokenize(data.token, cfg, seed)[:16]


def read_mlp_checkpoint(ckpt, data, cfg, seed):

    if ckpt is None or not RunDir.checkpoint_file(ckpt, "state").exists():
        return None
    meta = json.loads(RunDir.checkpoint_file(ckpt, "state").read_text())
    if meta.get("token") != mlp_checkpoint_token(data, cfg, seed):
        return None
    from shardflow.pipelines.records.artifacts import load_weights

    meta["params"] = load_weights(RunDir.checkpoint_file(ckpt, "params"))
    meta["best_params"] = load_weights(RunDir.checkpoint_file(ckpt, "best"))
    return meta


def write_mlp_checkpoint(ckpt, state, token) -> None:

    from shardflow.pipelines.records.artifacts import weights_bytes

    ckpt.mkdir(parents=True, exist_ok=True)
    for what, key in (("params", "params"), ("best", "best_params")):
        write_bytes_atomic(RunDir.checkpoint_file(ckpt, what), weights_bytes(state[key]))
    meta = {k: v for k, v in state.items() if k not in ("params", "best_params")}
    meta["token"] = token
    # last: the weights it names are in place
    write_text_atomic(RunDir.checkpoint_file(ckpt, "state"), json.dumps(meta, default=float))
