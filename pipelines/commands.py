"""What each sub-command of the ``shardflow`` command does, once its arguments are parsed.

One ``cmd_<name>(args)`` per sub-command (``run``, ``etl``, ``plan``, ``predict``,
``export``, ``report``, ``runs``, ``generate``): each loads the job's config with the
command line's overrides, calls the function of the same name in the layer that owns it,
prints what the user asked for and returns the exit status. The parser and the entry
point (:func:`~shardflow.pipelines.cli.main`) are in :mod:`.cli`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from shardflow.pipelines.rundir import RunDir, write_bytes_atomic

logger = logging.getLogger("shardflow")


def _cluster_overrides(args) -> list[str]:
    pairs = {
        "spec": args.cluster,
        "n_workers": args.n_workers,
        "threads_per_worker": args.threads_per_worker,
        "memory_limit": args.memory_limit,
    }
    return [f"cluster.{k}={v}" for k, v in pairs.items() if v is not None]


def _load(args, base_dir=None):
    from shardflow.core.storage import check_url, location, url_scheme
    from shardflow.pipelines.config import ConfigError, load_config

    overrides = list(args.overrides) + _cluster_overrides(args)
    if args.runs_dir:  # a command-line path is relative to the working directory
        try:
            check_url(args.runs_dir, "--runs-dir")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        runs_dir = args.runs_dir if url_scheme(args.runs_dir) else str(location(args.runs_dir).expanduser().resolve())
        overrides.append(f"output.runs_dir={json.dumps(runs_dir)}")
    return load_config(
        args.config, overrides, base_dir=base_dir, allow_remote_cluster=getattr(args, "allow_remote_cluster", False)
    )


def cmd_generate(args) -> int:
    from shardflow.cluster.config import ClusterConfig
    from shardflow.cluster.factory import connect
    from shardflow.pipelines.generate import generate

    cluster = ClusterConfig(
        spec=args.cluster or "local",
        n_workers=args.n_workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
    )
    with connect(cluster) as runtime:
        generate(
            args.out,
            args.rows,
            seed=args.seed,
            rows_per_partition=args.rows_per_partition,
            runtime=runtime,
            overwrite=args.overwrite,
        )
    return 0


def cmd_etl(args) -> int:
    from shardflow.pipelines.etl import etl

    config = _load(args)
    result = etl(config)
    print(result.stage_dir)
    return 0


def cmd_plan(args) -> int:
    from shardflow.pipelines.plan import InputPlan, format_plan

    config = _load(args)
    plan = InputPlan(config)
    plan.spec  # noqa: B018 - the columns and joins are checked, as the ETL would first
    with contextlib.closing(plan.start_cluster()) as runtime:
        print(format_plan(plan.with_threads(runtime.threads).describe(runtime)))
    return 0


def cmd_predict(args) -> int:
    from shardflow.cluster.config import ClusterConfig
    from shardflow.pipelines.predict import predict

    cluster = ClusterConfig(
        spec=args.cluster or "auto",
        n_workers=args.n_workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
    )
    result = predict(
        args.run,
        args.input,
        args.output,
        model=args.model,
        cluster=cluster,
        overwrite=args.overwrite,
        engine=args.engine,
        precision=args.precision,
        fail_on_drift=args.fail_on_drift,
        **({"psi_threshold": args.psi_threshold} if args.psi_threshold is not None else {}),
    )
    print(result.output)
    return 0


def cmd_export(args) -> int:
    from shardflow.pipelines.export import export

    result = export(
        args.run_dir,
        args.out,
        model=args.model,
        quantize=args.quantize,
        overwrite=args.overwrite,
        int8_tolerance=args.int8_tolerance,
    )
    print(result.path)
    return 0


def cmd_run(args) -> int:
    from shardflow.cluster.factory import start
    from shardflow.pipelines.generate import generate, is_generated
    from shardflow.pipelines.job import run

    work = args.work_dir.expanduser().resolve()
    if args.config is None:
        data_dir = work / "data" / f"trips-{args.rows}"
        if args.runs_dir is None:
            args.runs_dir = str(work / "runs")
        config = _load(args, base_dir=data_dir)
    else:
        data_dir = None
        config = _load(args)

    def show_results(run_dir) -> None:  # as soon as they exist: the report is drawn after
        print(RunDir(run_dir).comparison.read_text().strip())
        print(f"run:    {run_dir}", flush=True)

    generating = data_dir is not None and not is_generated(data_dir, args.rows, seed=0)
    if not generating and not args.performance_report:
        # run() starts the cluster the plan chooses, and closes it while the report is drawn.
        result = run(config, resume=args.resume, force=args.force, on_evaluated=show_results)
    else:
        from shardflow.pipelines.report import build_report

        with contextlib.closing(start(config.cluster)) as runtime:  # generation and the job share it
            if generating:
                logger.info("default dataset %s is absent: generating %d rows", data_dir, args.rows)
                generate(data_dir, args.rows, runtime=runtime, overwrite=True)
            with _performance_report(args.performance_report) as perf:
                result = run(config, runtime=runtime, resume=args.resume, force=args.force, on_evaluated=show_results)
                perf.run_dir = result.run_dir
        if args.performance_report:
            build_report(result.run_dir)
    print(f"report: {RunDir(result.run_dir).report}")
    return 0


class _PerformanceTarget:
    run_dir = None


@contextlib.contextmanager
def _performance_report(enabled: bool):
    """Dask's performance report for the block, moved into the run directory at the end."""
    target = _PerformanceTarget()
    if not enabled:
        yield target
        return
    import os
    import tempfile

    from distributed import performance_report

    fd, tmp = tempfile.mkstemp(suffix=".html")
    os.close(fd)
    # inline: Bokeh's JavaScript inside the file, so the report opens offline.
    with performance_report(filename=tmp, mode="inline"):
        yield target
    if target.run_dir is not None:
        final = RunDir(target.run_dir).performance_report
        if isinstance(final, Path):
            os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a report like the others
            os.replace(tmp, final)
        else:  # in an object store: one object, written whole
            write_bytes_atomic(final, Path(tmp).read_bytes())
            os.unlink(tmp)
        logger.info("performance report: %s", final)


def cmd_report(args) -> int:
    from shardflow.pipelines.report import build_report

    print(build_report(args.run_dir))
    return 0


def cmd_runs(args) -> int:
    from shardflow.pipelines.report import list_runs

    runs = list_runs(args.runs_dir)
    if not runs:
        print(f"no runs in {args.runs_dir}")
        return 0
    from shardflow.pipelines.family_specs import label

    print(f"{'run':<24} {'date':<17} {'input':<32} {'rows':>11} {'stages':<20} {'best model':<32} metric")
    for r in runs:
        value = "" if r["best_value"] is None else f"{r['metric']} {r['best_value']:.4f}"
        rows = "" if r["rows"] is None else f"{r['rows']:,}"
        model = label(r["best_model"]) if r["best_model"] else ""
        source = _shorten(r["input"] or "", 32)
        print(
            f"{r['run']:<24} {r['date'] or '':<17} {source:<32} {rows:>11} {','.join(r['stages']):<20} "
            f"{model:<32} {value}"
        )
    return 0


def _shorten(text: str, width: int) -> str:
    """``text``, its start elided when longer than ``width`` (the file name stays visible)."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]
