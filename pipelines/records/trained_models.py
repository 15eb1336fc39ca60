"""A run's trained models: each family's files written into the train stage, listed, loaded
back (every file checked against the manifest), and the files scoring reads.

Built on :mod:`~shardflow.pipelines.records.artifacts` (files and their hashes) and the
family registry (what each family writes and reads).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shardflow.core.errors import ShardflowError
from shardflow.core.storage import location
from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.records.artifacts import ArtifactError, RunFiles, verified_path, write_json
from shardflow.pipelines.records.manifest import Manifest
from shardflow.pipelines.records.rundir import RunDir, read_manifest


def save_models(stage_dir: Path, results: dict, task: str) -> None:
    """Write each trained family's files into ``stage_dir`` (the temporary train stage)."""

    stage_dir = location(stage_dir)
    for name, result in results.items():
        FAMILIES[name].save(stage_dir, result)
    write_json(RunDir.train_file(stage_dir, "task"), {"task": task})


def available_models(run_dir: Path) -> list:
    """The families trained in a run, in the registry's order."""

    run = RunDir(run_dir)
    recorded = read_manifest(run_dir).artifacts
    return [name for name, family in FAMILIES.items() if run.relative(run.trained(family.file())) in recorded]


def load_model(run_dir, name: str) -> dict:
    """Load one trained family's payload (what its ``predict`` function takes), with ``task``.

    Raises
    ------
    ArtifactError
        A file is missing, or differs from what the manifest recorded.
    """

    files = RunFiles(run_dir)
    if not files.manifest.has(RunDir.TRAIN):
        raise ArtifactError(f"{run_dir}: has no trained models (no train stage in its manifest)")
    if name not in available_models(run_dir):
        raise ArtifactError(
            f"model {name!r} was not trained in {run_dir}; available: {', '.join(available_models(run_dir))}"
        )
    task = files.read_json(files.run.trained("task"))["task"]
    return {"task": task, **FAMILIES[name].load(files)}


@dataclass
class ScoringFiles:
    """What scoring with a finished run reads from it, every file checked against the manifest."""

    manifest: Manifest
    model: str
    payload: dict
    preprocessor: object  #: :class:`~shardflow.tasks.encode.Preprocessor`
    config_path: Path
    metrics: dict  #: ``evaluate/metrics.json`` (``{"metrics": {}}`` for a run not evaluated)


def scoring_files(run_dir, model: str | None = None, *, option: str = "--run") -> ScoringFiles:
    """The verified files ``predict`` and ``export`` score with: the model (default: the run's
    best on validation), its preprocessing and the run's config.

    A shared run directory edited after the run is refused here, never executed.
    """
    from shardflow.tasks.encode import Preprocessor
    from shardflow.tasks.metrics import best_model

    run_dir = location(run_dir)
    manifest = read_manifest(run_dir)
    run = RunDir(run_dir)
    if not manifest.has(RunDir.TRAIN):
        raise ShardflowError(f"{option} {run_dir}: not a finished run (no train stage in its manifest.json)")
    evaluated = run.relative(run.metrics) in manifest.artifacts
    metrics = (
        json.loads(verified_path(run_dir, run.relative(run.metrics), manifest).read_text())
        if evaluated
        else {"metrics": {}}
    )
    if model is None:
        if not metrics["metrics"]:
            raise ShardflowError(f"{option} {run_dir}: not evaluated, so there is no best model; pass --model")
        model = best_model(metrics["metrics"], metrics["task"])
    payload = load_model(run_dir, model)
    preprocessor = Preprocessor.from_json(verified_path(run_dir, run.relative(run.preprocessor), manifest).read_text())
    config_path = verified_path(run_dir, run.relative(run.config), manifest)
    return ScoringFiles(manifest, model, payload, preprocessor, config_path, metrics)


def copy_scoring_files(run_dir, destination) -> Path:
    """Copy what scoring one of the run's models reads into ``destination`` (a new local
    folder, the same layout): the manifest, the config, the fitted preprocessing, the
    evaluation's metrics and the train stage's files, each checked against the manifest
    first. :func:`~shardflow.pipelines.serving.model.load_model` opens the copy like the run
    (its dimension tables, when it joins any, are read where the run recorded them).

    Returns
    -------
    pathlib.Path
        ``destination``.
    """
    from shardflow.pipelines.records.manifest import stage_of
    from shardflow.pipelines.records.rundir import MANIFEST

    files = RunFiles(run_dir)
    run = files.run
    wanted = {run.relative(run.config), run.relative(run.preprocessor)}
    if run.relative(run.metrics) in files.manifest.artifacts:
        wanted.add(run.relative(run.metrics))
    wanted |= {name for name in files.manifest.artifacts if stage_of(name) == RunDir.TRAIN}
    destination = Path(destination)
    for relative in sorted(wanted):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(verified_path(run.path, relative, files.manifest).read_bytes())
    (destination / MANIFEST).write_text(files.manifest.to_json())  # the manifest the files were checked against
    return destination
