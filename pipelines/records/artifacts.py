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

from shardflow.core.errors import ShardflowError
from shardflow.core.storage import location
from shardflow.pipelines.records.manifest import Manifest
from shardflow.pipelines.records.rundir import RunDir, read_manifest


class ArtifactError(ShardflowError):
    """An artifact is missing or does not match the run's manifest."""


def sha256(path) -> str:
    digest = hashlib.sha256()
    with location(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_bytes(params: dict) -> bytes:
    """``{name: array}`` as ``torch.save`` bytes of a plain ``{name: tensor}`` dict."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}, buffer)
    return buffer.getvalue()


def save_weights(params: dict, path) -> None:
    location(path).write_bytes(weights_bytes(params))


def load_weights(path) -> dict:
    """``{name: array}`` from a file :func:`save_weights` wrote, read with torch's weights-only
    loader (it runs nothing a file holds).

    Raises
    ------
    ArtifactError
        The file is not such a file (a pickle of other objects, truncated, not torch's format,
        not a ``{name: tensor}`` dict); one line naming it, not torch's advice to load it unsafely.
    """
    path = location(path)
    return weights_from_bytes(path.read_bytes(), path)


def weights_from_bytes(data: bytes, path) -> dict:
    """:func:`load_weights` of bytes already read from ``path`` (named in the error)."""
    import io
    import pickle

    import torch

    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        why = (
            "UnpicklingError: torch's weights-only loader refused it, a pickle of other objects or not torch's "
            "format; nothing in it was run"
        )
    except (RuntimeError, EOFError, ValueError) as err:  # a truncated or foreign zip archive, an empty file
        why = f"{type(err).__name__}: truncated, or not torch's format"
    else:
        if isinstance(loaded, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            return {k: v.numpy() for k, v in loaded.items()}
        why = f"it holds a {type(loaded).__name__}, not {{name: tensor}}"
    raise ArtifactError(
        f"{path}: not a weights file shardflow wrote ({why}); it was changed after the run: restore it or train again"
    )


def artifact_hashes(run_dir: Path, stage: str) -> dict:
    """``{relative path: sha256}`` of every file of a stage, for the manifest."""
    run = RunDir(run_dir)
    return {run.relative(p): sha256(p) for p in sorted(run.stage(stage).rglob("*")) if p.is_file()}


def verified_path(run_dir: Path, relative: str, manifest: Manifest | None = None) -> Path:
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
    path = location(run_dir) / relative
    expected = manifest.artifacts.get(relative)
    if expected is None:
        raise ArtifactError(f"{path}: not listed in the run's manifest; it was not written by this run")
    if not path.exists():
        raise ArtifactError(f"{path}: missing; the run directory is incomplete (rerun `shardflow run`)")
    if sha256(path) != expected:
        raise ArtifactError(
            f"{path}: does not match the run's manifest (sha256 differs); it was changed after "
            "the run: restore it or train again"
        )
    return path


class RunFiles:
    """A run directory's files, each read only after its hash is checked (:func:`verified_path`)."""

    def __init__(self, run_dir, manifest: Manifest | None = None):
        self.run = RunDir(run_dir)
        self.manifest = read_manifest(self.run.path) if manifest is None else manifest

    def path(self, path) -> Path:
        """``path`` (inside the run), checked."""
        return verified_path(self.run.path, self.run.relative(path), self.manifest)

    def read_bytes(self, path) -> bytes:
        return self.path(path).read_bytes()

    def read_json(self, path):
        return json.loads(self.path(path).read_text())

    def read_weights(self, path) -> dict:
        return load_weights(self.path(path))


def write_json(path: Path, data) -> None:
    """``data`` as JSON (NumPy arrays and scalars as lists and numbers)."""
    location(path).write_text(json.dumps(data, indent=1, default=_jsonable))


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_dimension_tables(config, manifest: Manifest) -> None:
    """The join tables hold what the run was trained with (their SHA-256, from its manifest)."""
    recorded = {j["path"]: j["sha256"] for j in manifest.joins}
    for i, join in enumerate(config.joins):
        path = config.resolve(join.path)
        if path not in recorded:
            raise ArtifactError(
                f"joins[{i}].path {path}: not recorded in the run's manifest; the run was "
                "made by an older shardflow or edited: train again"
            )
        table = location(path, config.storage_options)
        if not table.is_file() or sha256(table) != recorded[path]:
            raise ArtifactError(
                f"{path}: the dimension table changed since the run (sha256 differs); "
                "restore it, or train again on the new table"
            )
