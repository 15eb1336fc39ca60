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
from shardflow.pipelines.records.manifest import Manifest, stage_of
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


def copy_scoring_files(run_dir, destination, families=None) -> Path:
    """Copy what scoring the run's models reads into ``destination`` (a new local folder): the
    manifest, the config, the fitted preprocessing, the evaluation's metrics and the train
    stage's files of ``families`` (default: every family; a family built on others brings
    theirs), each checked against the manifest first, in a local run's layout (a run in
    an object store keeps each stage under a prefix of its own: here under the stage's name).
    :func:`~shardflow.pipelines.serving.model.load_model` opens the copy like the run (its
    dimension tables, when it joins any, are read where the run recorded them).

    A manifest is untrusted: a file name in it that leaves its folder (absolute, ``..``, an
    empty part) or a file that is a link out of the run is refused; nothing is written
    outside ``destination``.

    Returns
    -------
    pathlib.Path
        ``destination``.

    Raises
    ------
    ArtifactError
        One line naming the file refused and why.
    """
    from dataclasses import replace

    from shardflow.core.storage import StorePath
    from shardflow.pipelines.records.rundir import MANIFEST

    files = RunFiles(run_dir)
    run, manifest = files.run, files.manifest
    wanted = {run.relative(run.config), run.relative(run.preprocessor)}
    if run.relative(run.metrics) in manifest.artifacts:
        wanted.add(run.relative(run.metrics))
    kept = None if families is None else _with_needs(families)
    wanted |= {
        name
        for name in manifest.artifacts
        if stage_of(name) == RunDir.TRAIN and (kept is None or _family_of(name) in kept | {None})
    }
    destination = Path(destination).resolve()
    inside = None if isinstance(run.path, StorePath) else Path(run.path).resolve()
    copied = {}
    for name in sorted(wanted):
        local = _local_name(name, run.path)
        source = verified_path(run.path, name, manifest)
        if inside is not None and not Path(source).resolve().is_relative_to(inside):
            raise ArtifactError(f"{source}: a link out of the run directory; it was changed after the run")
        target = destination / local
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        copied[local] = manifest.artifacts[name]
    # The manifest the files were checked against, naming them as they lie here.
    (destination / MANIFEST).write_text(replace(manifest, artifacts=copied, locations={}).to_json())
    return destination


def _with_needs(families) -> set:
    """``families`` and every family they are built on."""
    out, queue = set(), list(families)
    while queue:
        name = queue.pop()
        if name not in out:
            out.add(name)
            queue.extend(FAMILIES[name].needs)
    return out


def _family_of(name: str) -> str | None:
    """The family a train-stage file belongs to (``train/xgboost_partitions/model-00001.ubj``
    → ``xgboost_partitions``); None for the stage's own files (its task, seconds, peak memory).

    Examples
    --------
    >>> _family_of("train@host-1-ab12/xgboost.ubj"), _family_of("train/mlp_partitions/model-00000.pt")
    ('xgboost', 'mlp_partitions')
    >>> _family_of("train/seconds.json") is None
    True
    """
    first = name.split("/", 1)[1].split("/", 1)[0]
    stem = first.split(".", 1)[0]
    return stem if stem in FAMILIES else None


def _local_name(name: str, run_dir) -> str:
    """A manifest's file name in a local run's layout (``train@host-1-ab12/x.ubj`` → ``train/x.ubj``).

    Examples
    --------
    >>> _local_name("train@host-1-ab12/xgboost.ubj", "run"), _local_name("config.yaml", "run")
    ('train/xgboost.ubj', 'config.yaml')
    >>> _local_name("train/../../.bashrc", "run")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    shardflow...ArtifactError: run/manifest.json: names the file 'train/../../.bashrc', which leaves ...
    """
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
        raise ArtifactError(
            f"{run_dir}/manifest.json: names the file {name!r}, which leaves the run directory; "
            "the manifest was changed after the run"
        )
    return "/".join([stage_of(name), *parts[1:]]) if len(parts) > 1 else name
