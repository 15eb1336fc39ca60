"""Saving and loading trained models, never with pickle, always checked against the manifest.

XGBoost models are UBJSON (``Booster.save_model``), torch weights are ``torch.save``
of a plain ``{name: tensor}`` dict read back with ``weights_only=True``, everything else
is JSON. The run manifest records the SHA-256 of every artifact; loading recomputes it
and refuses a file that was changed, swapped or truncated after the run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from shardflow.pipelines.rundir import read_manifest
from shardflow.tasks.errors import ShardflowError

TRAIN_DIR = "train"


class ArtifactError(ShardflowError):
    """An artifact is missing or does not match the run's manifest."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(params: dict, path: Path) -> None:
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}, path)


def load_weights(path: Path) -> dict:
    import torch

    return {k: v.numpy() for k, v in torch.load(path, weights_only=True, map_location="cpu").items()}


def save_models(stage_dir: Path, results: dict, task: str) -> None:
    """Write each trained family's files into ``stage_dir`` (the temporary train stage)."""
    stage_dir = Path(stage_dir)
    if "xgboost" in results:
        r = results["xgboost"]
        (stage_dir / "xgboost.ubj").write_bytes(r["model"])
        _json(stage_dir / "xgboost.json", {k: r[k] for k in ("history", "best_iteration", "rounds", "round_seconds",
                                                             "seconds", "resumed_from", "restarts", "params")})
    for family, suffix in (("xgboost_partitions", "ubj"), ("mlp_partitions", "pt")):
        if family not in results:
            continue
        r = results[family]
        (stage_dir / family).mkdir()
        for i, member in enumerate(r["members"]):
            path = stage_dir / family / f"model-{i:05d}.{suffix}"
            if suffix == "ubj":
                path.write_bytes(member["model"])
            else:
                save_weights(member["params"], path)
        meta = {k: r[k] for k in ("groups", "weights", "seconds", "partition_metrics")}
        meta["histories"] = [member.get("history", {}) for member in r["members"]]
        if family == "mlp_partitions":
            meta["spec"] = r["spec"].to_dict()
        _json(stage_dir / f"{family}.json", meta)
    if "stacked" in results:
        r = results["stacked"]
        _json(stage_dir / "stacked.json", {"members": "xgboost_partitions", **{k: r[k] for k in (
            "coef", "coef_even", "coef_odd", "seconds", "newton_steps")}})
    if "mlp" in results:
        r = results["mlp"]
        save_weights(r["params"], stage_dir / "mlp.pt")
        _json(stage_dir / "mlp.json", {"spec": r["spec"].to_dict(), **{k: r[k] for k in (
            "history", "best_epoch", "rounds", "steps_per_epoch", "sync_every", "seconds", "workers", "samples",
            "restarts")}})
    _json(stage_dir / "task.json", {"task": task})


def artifact_hashes(run_dir: Path, stage: str = TRAIN_DIR) -> dict:
    """``{relative path: sha256}`` of every file of a stage, for the manifest."""
    root = Path(run_dir)
    return {str(p.relative_to(root)): sha256(p) for p in sorted((root / stage).rglob("*")) if p.is_file()}


def verified_path(run_dir: Path, relative: str, manifest: dict | None = None) -> Path:
    """``run_dir / relative``, after checking it against the SHA-256 the manifest recorded.

    Everything that scoring reads from a run directory (models, the fitted
    preprocessing, the config with its expressions, the evaluation that picks the
    best model) goes through here: a shared run directory edited after the run is
    refused, not executed.

    Raises
    ------
    ArtifactError
        The file is not in the manifest, is missing, or differs from the recorded hash.
    """
    manifest = read_manifest(run_dir) if manifest is None else manifest
    path = Path(run_dir) / relative
    expected = manifest.get("artifacts", {}).get(relative)
    if expected is None:
        raise ArtifactError(f"{path}: not listed in the run's manifest; it was not written by this run")
    if not path.exists():
        raise ArtifactError(f"{path}: missing; the run directory is incomplete (rerun `shardflow run`)")
    if sha256(path) != expected:
        raise ArtifactError(f"{path}: does not match the run's manifest (sha256 differs); it was changed after "
                            "the run: restore it or train again")
    return path


def available_models(run_dir: Path) -> list:
    manifest = read_manifest(run_dir)
    names = {"xgboost": "train/xgboost.ubj", "xgboost_partitions": "train/xgboost_partitions.json",
             "stacked": "train/stacked.json", "mlp": "train/mlp.pt", "mlp_partitions": "train/mlp_partitions.json"}
    return [n for n, f in names.items() if f in manifest.get("artifacts", {})]


def load_model(run_dir, name: str) -> dict:
    """Load one trained family's payload (see :func:`shardflow.tasks.models.predict_payload`).

    Raises
    ------
    ArtifactError
        A file is missing, or differs from what the manifest recorded.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if "train" not in manifest.get("stages", {}):
        raise ArtifactError(f"{run_dir}: has no trained models (no train stage in its manifest)")
    if name not in available_models(run_dir):
        raise ArtifactError(f"model {name!r} was not trained in {run_dir}; available: "
                            f"{', '.join(available_models(run_dir))}")
    task = json.loads(verified_path(run_dir, "train/task.json", manifest).read_text())["task"]
    if name == "xgboost":
        return {"task": task, "model": verified_path(run_dir, "train/xgboost.ubj", manifest).read_bytes()}
    if name in ("xgboost_partitions", "stacked"):
        meta = json.loads(verified_path(run_dir, "train/xgboost_partitions.json", manifest).read_text())
        models = [verified_path(run_dir, f"train/xgboost_partitions/model-{i:05d}.ubj", manifest).read_bytes()
                  for i in range(len(meta["weights"]))]
        payload = {"task": task, "models": models, "weights": meta["weights"]}
        if name == "stacked":
            stacked = json.loads(verified_path(run_dir, "train/stacked.json", manifest).read_text())
            payload.update({k: stacked[k] for k in ("coef", "coef_even", "coef_odd")})
        return payload
    if name == "mlp":
        meta = json.loads(verified_path(run_dir, "train/mlp.json", manifest).read_text())
        return {"task": task, "spec": meta["spec"], "params": load_weights(verified_path(run_dir, "train/mlp.pt", manifest))}
    meta = json.loads(verified_path(run_dir, "train/mlp_partitions.json", manifest).read_text())
    params = [load_weights(verified_path(run_dir, f"train/mlp_partitions/model-{i:05d}.pt", manifest))
              for i in range(len(meta["weights"]))]
    return {"task": task, "spec": meta["spec"], "params": params, "weights": meta["weights"]}


def _json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, default=_jsonable))


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
