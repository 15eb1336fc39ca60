"""What each sub-command of the ``shardflow`` command does, once its arguments are parsed.

One ``cmd_<name>(args)`` per sub-command (``run``, ``tune``, ``etl``, ``plan``, ``predict``,
``export``, ``report``, ``runs``, ``generate``): each loads the job's config with the
command line's overrides, calls the function of the same name in the layer that owns it,
prints what the user asked for and returns the exit status. The parser and the entry
point (:func:`~shardflow.pipelines.interface.cli.main`) are in :mod:`.cli`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from shardflow.core.errors import ShardflowError
from shardflow.pipelines.interface.console import comparison_text
from shardflow.pipelines.records.rundir import RunDir, write_bytes_atomic

logger = logging.getLogger("shardflow")

#: Where ``shardflow run`` puts the default dataset and its runs (``--work-dir``).
DEFAULT_WORK_DIR = Path("shardflow-work")


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
    from shardflow.pipelines.setup.config import ConfigError, load_config

    check_config_path(args.config)
    overrides = list(args.overrides) + _cluster_overrides(args)
    if args.runs_dir:  # a command-line path is relative to the working directory
        try:
            check_url(args.runs_dir, "--runs-dir")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        runs_dir = args.runs_dir if url_scheme(args.runs_dir) else str(location(args.runs_dir).expanduser().resolve())
        overrides.append(f"output.runs_dir={json.dumps(runs_dir)}")
    config = load_config(
        args.config, overrides, base_dir=base_dir, allow_remote_cluster=getattr(args, "allow_remote_cluster", False)
    )
    _hint_at_lists(config, args.overrides)
    return config


#: Data files that are given as a config by mistake: their kind, by suffix.
_DATA_FILES = {".csv": "a CSV file", ".tsv": "a CSV file", ".parquet": "a Parquet file", ".pq": "a Parquet file"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


def check_config_path(path) -> None:
    """Refuse a data file (or a directory) given as ``-c``, saying what a config is."""
    if path is None:
        return
    from shardflow.core.storage import url_scheme
    from shardflow.pipelines.setup.config import ConfigError

    name = str(path)
    suffixes = [s.lower() for s in Path(name).suffixes[-2:]]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    kind = _DATA_FILES.get(suffixes[-1]) if suffixes else None
    if kind is None and not url_scheme(name) and Path(name).expanduser().is_dir():
        kind = "a directory"
    if kind is not None:
        raise ConfigError(f"{name} is {kind}, not a config: write a job YAML with input.path: {name} (see README)")


def _hint_at_lists(config, overrides) -> None:
    """Warn about ``--set key=a,b`` that made a one-item list (a column named "a,b")."""
    data = config.to_dict()
    for item in overrides:
        key, _, value = item.partition("=")
        if "," not in value or value.strip()[:1] in ("[", "{", "'", '"'):
            continue
        node = data
        for part in key.strip().split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node == [value.strip()]:
            logger.warning("--set %s: read as one item %r; a list is written %s=[%s]", item, node[0], key, value)


def _job(args):
    """The job's config and, for the default job (no ``-c``), its dataset's directory, as
    ``run`` and ``plan`` find them: the default job's data and runs under ``--work-dir``."""
    if args.config is not None:
        return _load(args), None
    work = args.work_dir.expanduser().resolve()
    data_dir = work / "data" / f"trips-{args.rows}"
    if args.runs_dir is None:
        args.runs_dir = str(work / "runs")
    return _load(args, base_dir=data_dir), data_dir


def runs_dir_of(args):
    """The runs directory that run ids are looked up in, found as ``shardflow run`` finds it:
    ``--runs-dir``, else the ``-c`` config's ``output.runs_dir``, else ``<--work-dir>/runs``."""
    from shardflow.core.storage import check_url, location, url_scheme
    from shardflow.pipelines.setup.config import ConfigError, load_config

    given = getattr(args, "runs_dir", None)
    if given:
        try:
            check_url(str(given), "--runs-dir")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return location(given) if url_scheme(given) else location(given).expanduser().resolve()
    if getattr(args, "config", None):
        check_config_path(args.config)
        return load_config(args.config, allow_remote_cluster=True).runs_dir  # read, nothing started from it
    return Path(getattr(args, "work_dir", None) or DEFAULT_WORK_DIR).expanduser().resolve() / "runs"


def is_run_id(text: str) -> bool:
    """Whether ``text`` is a run id (a name inside the runs directory), not a path: no
    separator, not ``.`` or ``..``, so an id never reaches outside the runs directory.

    Examples
    --------
    >>> is_run_id("20260101-120000-ab12cd"), is_run_id("../x"), is_run_id("/tmp/x"), is_run_id("..")
    (True, False, False, False)
    """
    separators = {"/", os.sep, os.altsep or "/"}
    return bool(text) and text not in (".", "..") and not any(s in text for s in separators)


def resolve_run(value, runs_dir):
    """The run directory that ``value`` names: a run id that ``shardflow runs`` lists (a
    run in ``runs_dir``), or an explicit path or URL. Raises :class:`ShardflowError`
    ("no such run") before anything is written when there is none."""
    from shardflow.core.storage import location, url_scheme

    text = str(value)
    if url_scheme(text) or text.lower().startswith("file://"):
        return location(text)
    if is_run_id(text):
        candidate = location(runs_dir) / text
        if RunDir(candidate).manifest.exists():
            return candidate
        if Path(text).is_dir():  # a run directory in the working directory, named as a path
            return Path(text)
        raise ShardflowError(f"no such run: {text} (in {runs_dir}); `shardflow runs` lists them")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    raise ShardflowError(
        f"no such run directory: {text}; give a run id that `shardflow runs` lists (a name in {runs_dir}) "
        "or an existing run directory"
    )


def cmd_generate(args) -> int:
    from shardflow.cluster.config import ClusterConfig
    from shardflow.cluster.factory import connect
    from shardflow.pipelines.setup.generate import generate

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
    from shardflow.pipelines.etl.stage import etl

    config = _load(args)
    result = etl(config)
    print(result.stage_dir)
    return 0


def cmd_plan(args) -> int:
    from shardflow.pipelines.setup.generate import is_generated
    from shardflow.pipelines.setup.plan import plan

    config, data_dir = _job(args)
    if data_dir is not None and not is_generated(data_dir, args.rows, seed=0):
        raise ShardflowError(
            f"the default job's dataset {data_dir} is not generated yet: `shardflow run --rows {args.rows}` "
            f"generates it (or `shardflow generate --rows {args.rows} --out {data_dir}`); or plan a job: "
            "shardflow plan -c job.yaml"
        )
    print(plan(config))
    return 0


def cmd_predict(args) -> int:
    from shardflow.cluster.config import ClusterConfig
    from shardflow.pipelines.serving.predict import predict

    cluster = ClusterConfig(
        spec=args.cluster or "auto",
        n_workers=args.n_workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
    )
    run_dir = resolve_run(args.run, runs_dir_of(args))
    result = predict(
        run_dir,
        args.input,
        args.output,
        model=args.model,
        cluster=cluster,
        overwrite=args.overwrite,
        engine=args.engine,
        precision=args.precision,
        fail_on_drift=args.fail_on_drift,
        explain=args.explain,
        **({"psi_threshold": args.psi_threshold} if args.psi_threshold is not None else {}),
    )
    print(result.output)
    return 0


def cmd_export(args) -> int:
    from shardflow.pipelines.serving.export import export

    result = export(
        resolve_run(args.run, runs_dir_of(args)),
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
    from shardflow.pipelines.job import run
    from shardflow.pipelines.setup.generate import generate, is_generated

    config, data_dir = _job(args)
    resume = resolve_run(args.resume, config.runs_dir) if args.resume is not None else None
    started = []  # the run directory, once run() has chosen and claimed it

    def show_results(run_dir) -> None:  # as soon as they exist: the report is drawn after
        print(comparison_text(run_dir))
        print(f"run:    {run_dir}", flush=True)

    options = {"resume": resume, "force": args.force, "on_evaluated": show_results, "on_started": started.append}
    generating = data_dir is not None and not is_generated(data_dir, args.rows, seed=0)
    try:
        if not generating and not args.performance_report:
            # run() starts the cluster the plan chooses, and closes it while the report is drawn.
            result = run(config, **options)
        else:
            from shardflow.pipelines.interface.report import build_report

            with contextlib.closing(start(config.cluster)) as runtime:  # generation and the job share it
                if generating:
                    logger.info("default dataset %s is absent: generating %d rows", data_dir, args.rows)
                    generate(data_dir, args.rows, runtime=runtime, overwrite=True)
                with _performance_report(args.performance_report) as perf:
                    result = run(config, runtime=runtime, **options)
                    perf.run_dir = result.run_dir
            if args.performance_report:
                build_report(result.run_dir)
    except KeyboardInterrupt:
        print(interrupted_message(args, started[-1] if started else None, config.runs_dir), file=sys.stderr)
        return 130
    print(f"report: {RunDir(result.run_dir).report}")
    return 0


def cmd_tune(args) -> int:
    from shardflow.pipelines.tuning.search import tune

    config = _load(args)
    resume = resolve_run(args.resume, config.runs_dir) if args.resume is not None else None
    started = []
    try:
        result = tune(
            config,
            resume=resume,
            trials=args.trials,
            force=args.force,
            on_evaluated=lambda run_dir: print(comparison_text(run_dir)),
            on_started=started.append,
        )
    except KeyboardInterrupt:
        print(interrupted_message(args, started[-1] if started else None, config.runs_dir), file=sys.stderr)
        return 130
    for study in result.studies.values():
        default = "" if study.default_value is None else f", the defaults' {study.default_value:.6g}"
        print(
            f"tuned:  {study.family} validation {study.metric} {study.best_value:.6g} "
            f"(best of {study.trials} trials{default})"
        )
    print(f"run:    {result.run_dir}\nreport: {RunDir(result.run_dir).report}")
    return 0


def interrupted_message(args, run_dir, runs_dir) -> str:
    """What Ctrl-C during ``shardflow run`` prints: the command that continues the run, or,
    when no stage of it was complete, the same command again."""
    argv = list(getattr(args, "argv", None) or ["run"])
    if run_dir is None or not RunDir(run_dir).manifest.exists():
        return (
            "shardflow: interrupted before the run's first stage completed (nothing to resume); "
            f"start again with: {shlex.join(['shardflow', *argv])}"
        )
    same = str(getattr(run_dir, "parent", "")) == str(runs_dir)
    return f"shardflow: interrupted; continue with: {resume_command(argv, run_dir.name if same else str(run_dir))}"


def resume_command(argv, run_id: str) -> str:
    """``shardflow`` + ``argv`` (a ``run`` command line) with ``--resume run_id`` instead of
    its ``--resume``/``--force``.

    Examples
    --------
    >>> resume_command(["-q", "run", "-c", "job.yaml", "--force", "--resume=old"], "20260101-1")
    'shardflow -q run --resume 20260101-1 -c job.yaml'
    """
    kept, skip = [], False
    for token in argv:
        option = token.split("=", 1)[0]
        if skip:
            skip = False
        elif len(option) > 3 and "--resume".startswith(option):
            skip = "=" not in token
        elif len(option) > 2 and "--force".startswith(option):
            pass
        else:
            kept.append(token)
    command = next((i for i, token in enumerate(kept) if not token.startswith("-")), len(kept))
    return shlex.join(["shardflow", *kept[: command + 1], "--resume", run_id, *kept[command + 1 :]])


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
    from shardflow.pipelines.interface.report import build_report

    print(build_report(resolve_run(args.run, runs_dir_of(args))))
    return 0


def cmd_runs(args) -> int:
    from shardflow.pipelines.interface.report import list_runs

    runs_dir = runs_dir_of(args)
    runs = list_runs(runs_dir)
    if not runs:
        print(f"no runs in {runs_dir}")
        return 0
    from shardflow.pipelines.families.specs import label

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
