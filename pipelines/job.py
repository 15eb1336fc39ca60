"""Whole jobs: the ``train`` and ``evaluate`` stages, and ``run`` = ETL + train + evaluate.

Every stage output is keyed by what produced it: the ETL by the input files'
fingerprint, its config sections and the code version; training by the ETL key and the
``train`` section; evaluation by the training key. ``run`` skips a stage whose output
is complete and current, recomputes exactly the stages a change affects, and
``force=True`` recomputes everything.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from shardflow.cluster.factory import Runtime, as_runtime
from shardflow.cluster.memory import peak_memory, reset_peak_memory
from shardflow.cluster.plugins import PreloadPlugin
from shardflow.core.errors import ShardflowError
from shardflow.core.storage import location, remove_tree
from shardflow.pipelines.evaluation.evaluate import comparison_table, evaluate
from shardflow.pipelines.evaluation.explanations import explain
from shardflow.pipelines.families.registry import FAMILIES, training_order
from shardflow.pipelines.families.specs import libraries
from shardflow.pipelines.interface.figures import warm_up
from shardflow.pipelines.interface.report import ReportDrawing
from shardflow.pipelines.records import artifacts, trained_models
from shardflow.pipelines.records.manifest import StageRecord
from shardflow.pipelines.records.ownership import RunInUseError, claim_run, prepare_runs_dir, release_run, run_holder
from shardflow.pipelines.records.rundir import (
    RunDir,
    find_run,
    new_run_id,
    record_config,
    stage_output,
    update_manifest,
)
from shardflow.pipelines.records.stages import evaluate_key, stage_keys
from shardflow.pipelines.setup.config import Config
from shardflow.pipelines.setup.train_config import TrainConfig
from shardflow.pipelines.training import TrainingData, load_training_data
from shardflow.pipelines.training.schedule import overlap_decision, train_units, training_units

logger = logging.getLogger("shardflow.job")

STAGES = RunDir.STAGES


@dataclass
class TrainResult:
    """What :func:`train` produced: per-family results and training seconds."""

    run_dir: Path
    results: dict
    seconds: dict
    peak_memory: dict
    data: TrainingData | None = None

    @property
    def stage_dir(self) -> Path:
        return RunDir(self.run_dir).stage(RunDir.TRAIN)


@dataclass
class TrainContext:
    """What a model family's ``train`` gets: the cluster, the placed data, the ``train``
    section, the run directory, and the results of the families trained before it."""

    runtime: Runtime
    data: TrainingData
    config: TrainConfig
    run_dir: Path
    xgboost_callbacks: tuple
    results: dict = field(default_factory=dict)


@dataclass
class RunResult:
    """What :func:`run` produced."""

    run_dir: Path
    metrics: dict
    table: str
    train_seconds: dict
    skipped: list = field(default_factory=list)
    partition_metrics: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)
    task: str = ""  #: the target's kind (``binary``, ``multiclass``, ``regression``)

    def _repr_html_(self) -> str:
        """The comparison as a table in a notebook, the best model marked."""
        import html

        from shardflow.pipelines.interface.notebook_html import metrics_html

        caption = f"shardflow run {self.run_dir.name} ({self.task})"
        links = f"<p>{html.escape(str(self.run_dir))} · report: {html.escape(str(RunDir(self.run_dir).report))}</p>"
        return metrics_html(self.metrics, self.train_seconds, self.task, caption) + links


# ----------------------------------------------------------------------------- stages


def train(config: Config, runtime: Runtime, run_dir, xgboost_callbacks=(), key: str | None = None) -> TrainResult:
    """Train the families listed in ``config.train.models`` on a run's ETL output.

    Parameters
    ----------
    config : Config
    runtime : Runtime or distributed.Client
    run_dir : path
        A run directory holding a completed ``etl`` stage.
    xgboost_callbacks : sequence of xgboost.callback.TrainingCallback
        Extra callbacks for the global model (run on the workers).
    key : str, optional
        Stage key recorded in the manifest (default: from :func:`stage_keys`).

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> result = train(config, runtime, "shardflow-work/runs/20261122-101500-ab12cd")  # doctest: +SKIP
    >>> result.seconds["xgboost"]  # doctest: +SKIP
    """
    run_dir = location(run_dir)
    runtime = as_runtime(runtime)
    tc = config.train
    reset_peak_memory(runtime.client)
    started = time.perf_counter()
    run = RunDir(run_dir)
    data = load_training_data(runtime, run.stage(RunDir.ETL), tc.seed)
    logger.info(
        "train: %d partitions on %d workers, %d training and %d validation rows",
        len(data.futures),
        len(set(data.workers)),
        sum(data.train_rows),
        sum(data.valid_rows),
    )
    context = TrainContext(runtime, data, tc, run_dir, tuple(xgboost_callbacks))
    units = training_units(training_order(tc.models), context)
    workers = len(runtime.client.scheduler_info(n_workers=-1)["workers"])
    overlap = overlap_decision(tc.overlap, runtime.processes, workers)
    if overlap.overlap and sum(not unit.alone for unit in units) > 1:
        logger.info("train: %s", overlap.reason)
    train_units(context, units, overlap.overlap)
    if not context.results:
        raise ShardflowError(f"train.models: no family could train on this data ({', '.join(tc.models)})")
    results = {name: context.results[name] for name in FAMILIES if name in context.results}
    seconds = {name: result.seconds for name, result in results.items()}
    peaks = peak_memory(runtime.client)
    with stage_output(run_dir, RunDir.TRAIN) as tmp:
        trained_models.save_models(tmp, results, data.task)
        RunDir.train_file(tmp, "seconds").write_text(json.dumps(seconds, indent=1))
        RunDir.train_file(tmp, "peak_memory").write_text(json.dumps(peaks, indent=1))
    hashes = artifacts.artifact_hashes(run_dir, RunDir.TRAIN)
    key = key or stage_keys(config)[RunDir.TRAIN]
    stage = StageRecord(
        completed=time.strftime("%Y-%m-%dT%H:%M:%S"),
        key=key,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        wall_seconds=round(time.perf_counter() - started, 3),
        models=list(results),
    )
    run.record_stage(RunDir.TRAIN, stage, artifacts=hashes, seeds={"split": config.split.seed, "train": tc.seed})
    return TrainResult(run_dir, {name: result.state for name, result in results.items()}, seconds, peaks, data)


def evaluate_run(runtime: Runtime, run_dir, data: TrainingData | None = None, key: str | None = None) -> dict:
    """Evaluate every trained family of a run, loaded back from disk (what is scored is what is saved).

    Returns
    -------
    dict
        ``metrics``, ``partition_metrics``, ``curves``, ``table``, ``seconds``.
    """
    run_dir = location(run_dir)
    runtime = as_runtime(runtime)
    manifest = RunDir(run_dir).read_manifest()
    run = RunDir(run_dir)
    if not manifest.has(RunDir.TRAIN):
        raise ShardflowError(f"{run_dir}: has no trained models to evaluate")
    key = key or evaluate_key(manifest.key_of(RunDir.TRAIN) or "")
    names = trained_models.available_models(run_dir)
    payloads = {name: trained_models.load_model(run_dir, name) for name in names}
    task = next(iter(payloads.values()))["task"]
    seed = manifest.seeds.get("train", 0)
    data = data or load_training_data(runtime, run.stage(RunDir.ETL), seed)
    started = time.perf_counter()
    out = evaluate(runtime, data, payloads)
    explained = explain(runtime, data, payloads, seed=seed)
    out["seconds"] = time.perf_counter() - started  # scoring and explaining
    seconds = json.loads(run.trained("seconds").read_text())
    peaks = json.loads(run.trained("peak_memory").read_text())
    partition_models = {
        f: json.loads(run.trained(FAMILIES[f].file()).read_text())["partition_metrics"]
        for f in names
        if FAMILIES[f].records_partition_metrics
    }
    table = comparison_table(out["metrics"], seconds, task)
    with stage_output(run_dir, RunDir.EVALUATE) as tmp:
        RunDir.evaluate_file(tmp, "metrics").write_text(
            json.dumps(
                {
                    "task": task,
                    "classes": data.preprocessor.classes,
                    "metrics": out["metrics"],
                    "train_seconds": seconds,
                    "partition_metrics": out["partition_metrics"],
                    "curves": out["curves"],
                    "partition_models": partition_models,
                    "peak_memory": peaks,
                },
                indent=1,
                default=float,
            )
        )
        RunDir.evaluate_file(tmp, "comparison").write_text(table + "\n")
        RunDir.evaluate_file(tmp, "explanations").write_text(json.dumps(explained, default=float))
    stage = StageRecord(completed=time.strftime("%Y-%m-%dT%H:%M:%S"), key=key, seconds=round(out["seconds"], 3))
    run.record_stage(RunDir.EVALUATE, stage, artifacts={run.relative(run.metrics): artifacts.sha256(run.metrics)})
    return {**out, "table": table}


def run(
    config: Config,
    runtime: Runtime | None = None,
    run_dir=None,
    resume=None,
    force: bool = False,
    *,
    plan=None,
    on_evaluated=None,
    on_started=None,
) -> RunResult:
    """ETL, training of the configured models and evaluation, in one run directory.

    Parameters
    ----------
    config : Config
    runtime : Runtime or distributed.Client, optional
        A started cluster (default: one from ``config.cluster``, closed at the end).
    run_dir : path, optional
        Run directory to use. Default: the newest run under ``output.runs_dir`` whose
        ETL output is current for this config and input (its later stages are reused
        when current too), else a new one.
    resume : path, optional
        Continue this run (after an interrupted driver, a lost scheduler, a reboot):
        stages whose outputs are complete and current are not redone, and a
        partly trained global XGBoost or MLP continues from its checkpoint.
    force : bool
        Recompute every stage in a new run directory.
    plan : InputPlan, optional
        The job's input, inspected already (default: inspected here).
    on_evaluated : callable, optional
        ``on_evaluated(run_dir)`` as soon as the evaluation is written (the comparison
        table can be shown), before the report is drawn and the cluster closed.
    on_started : callable, optional
        ``on_started(run_dir)`` once the run directory is chosen and claimed (an interrupted
        command can then say which run to resume).

    Examples
    --------
    >>> from shardflow.pipelines.setup.config import load_config
    >>> result = run(load_config("job.yaml"))  # doctest: +SKIP
    >>> print(result.table)  # doctest: +SKIP
    """
    from shardflow.pipelines.setup.plan import InputPlan

    runs_dir = prepare_runs_dir(config.runs_dir)
    plan = plan or InputPlan(config)  # inspected once: for the stage keys, the cluster and, if needed, the ETL
    keys = stage_keys(config, plan)
    if resume is not None:
        run_dir = location(str(resume), config.storage_options)
        if not RunDir(run_dir).manifest.exists():
            raise ShardflowError(
                f"--resume {resume}: not a run directory (no manifest.json); give a directory under output.runs_dir"
            )
    elif run_dir is None and not force:
        run_dir = find_run(runs_dir, keys[RunDir.ETL])
        if run_dir is not None and not claim_run(run_dir):
            logger.info("run %s: in use by %s; this run gets a new directory", run_dir.name, run_holder(run_dir))
            run_dir = None
    run_dir = location(run_dir, config.storage_options) if run_dir else runs_dir / new_run_id()
    if not claim_run(run_dir):
        raise RunInUseError(
            f"{'--resume ' if resume is not None else ''}{run_dir}: in use by {run_holder(run_dir)}, "
            "which writes its stages; wait for it, or stop it (if it is gone from another host, "
            f"remove {RunDir(run_dir).lock})"
        )
    try:
        if on_started is not None:
            on_started(run_dir)
        return _run_claimed(config, runtime, run_dir, plan=plan, keys=keys, force=force, on_evaluated=on_evaluated)
    finally:
        release_run(run_dir)


def _run_claimed(config: Config, runtime, run_dir, *, plan, keys: dict, force: bool, on_evaluated) -> RunResult:
    """:func:`run` in a run directory this process has claimed."""
    from shardflow.pipelines.etl.stage import etl

    current = {stage: not force and RunDir(run_dir).is_current(stage, keys[stage]) for stage in STAGES}
    if not current[RunDir.ETL]:
        current[RunDir.TRAIN] = current[RunDir.EVALUATE] = False
        remove_tree(RunDir(run_dir).checkpoints())  # they belong to the old features
    if not current[RunDir.TRAIN]:
        current[RunDir.EVALUATE] = False
    skipped = [s for s in STAGES if current[s]]
    if skipped:
        logger.info("run %s: %s current, not recomputed", run_dir.name, ", ".join(skipped))
    tracked = None
    if config.tracking.mlflow is not None:
        from shardflow.pipelines.interface.tracking import MLflowRun

        tracked = MLflowRun(config.tracking.mlflow, run_dir)  # a resumed run continues its MLflow run
        logger.info(
            "run %s: tracked in MLflow run %s (experiment %r)",
            run_dir.name,
            tracked.run_id,
            config.tracking.mlflow.experiment,
        )
    owns, drawing, curves = runtime is None, None, None
    try:
        runtime = as_runtime(runtime) or plan.start_cluster()
        if not current[RunDir.TRAIN]:  # training's libraries load on the workers while the ETL runs
            runtime.client.register_plugin(PreloadPlugin(libraries(config.train.models)))
        if not current[RunDir.ETL]:
            etl(config, runtime=runtime, run_dir=run_dir, key=keys[RunDir.ETL], plan=plan)
        data = None
        if not current[RunDir.TRAIN]:
            if current[RunDir.ETL]:  # the run's config.yaml must say what its models are trained with
                record_config(run_dir, config.resolved().to_yaml())
            warm_up()  # the report's plotting library loads while the cluster trains
            trained = train(config, runtime, run_dir, key=keys[RunDir.TRAIN])
            data = trained.data
            curves = ReportDrawing.curves(run_dir)  # drawn while the evaluation runs
        if not current[RunDir.EVALUATE]:
            evaluate_run(runtime, run_dir, data, key=keys[RunDir.EVALUATE])
        if on_evaluated is not None:
            on_evaluated(run_dir)
        if not all(current.values()) or not RunDir(run_dir).report.exists():
            drawing = ReportDrawing(run_dir, curves=curves)  # drawn while the job ends (MLflow logs it: waits)
        if tracked is not None:
            from shardflow.pipelines.interface.tracking import log_run

            if drawing is not None:
                drawing.result()
            try:
                log_run(tracked, config, run_dir)
            except Exception as err:
                logger.warning(
                    "tracking: logging run %s to MLflow run %s failed (%s: %s); its stages are "
                    "complete, and `shardflow run --resume %s` logs it again",
                    run_dir.name,
                    tracked.run_id,
                    type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "",
                    run_dir,
                )
                tracked.finish("FAILED")
                tracked = None
            else:
                update_manifest(
                    run_dir,
                    tracking={"mlflow": {"experiment": config.tracking.mlflow.experiment, "run_id": tracked.run_id}},
                )
    except BaseException as err:
        if tracked is not None:
            tracked.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if owns and runtime is not None:
            runtime.close()
        if drawing is not None:
            drawing.result()
    if tracked is not None:
        tracked.finish()
    metrics = json.loads(RunDir(run_dir).metrics.read_text())
    table = RunDir(run_dir).comparison.read_text().strip()
    from dask.utils import format_bytes

    logger.info(
        "run done: %s; peak worker memory in training %s",
        run_dir,
        ", ".join(format_bytes(int(v)) for v in metrics["peak_memory"].values()),
    )
    return RunResult(
        run_dir,
        metrics["metrics"],
        table,
        metrics["train_seconds"],
        skipped,
        metrics["partition_metrics"],
        metrics["peak_memory"],
        metrics["task"],
    )
