"""The ``shardflow`` command: its arguments, its logging and its entry point, :func:`main`.

:func:`build_parser` declares every sub-command and option; :func:`main` sets up logging,
dispatches to the sub-command's handler (in :mod:`.commands`) and turns a shardflow error
into one line on stderr and an exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from shardflow.core.errors import ShardflowError
from shardflow.pipelines.families.specs import family_names
from shardflow.pipelines.interface.cli_tune import TUNE_HELP, add_tune_parser, cmd_tune
from shardflow.pipelines.interface.commands import (
    DEFAULT_WORK_DIR,
    cmd_etl,
    cmd_export,
    cmd_generate,
    cmd_plan,
    cmd_predict,
    cmd_report,
    cmd_run,
    cmd_runs,
)
from shardflow.pipelines.interface.console import DASHBOARD_LOGGERS

DEFAULT_ROWS = 1_000_000
#: What each command's ``--help`` says above its options (``description``) and below them
#: (``epilog``: examples, as they are typed).
COMMAND_HELP = {
    "run": (
        "Run the whole job: ETL, training of every configured model, evaluation and report, in a run\n"
        "directory under the runs directory. Without -c, the built-in trips job on the default dataset\n"
        "(generated under --work-dir on first use). Stages that are complete and current are reused.",
        "examples:\n"
        "  shardflow run                                   # the default job, 1M generated rows\n"
        "  shardflow run -c job.yaml --set train.models=[xgboost,mlp]\n"
        "  shardflow run -c job.yaml --resume 20260101-120000-ab12cd   # an id that `shardflow runs` lists",
    ),
    "etl": (
        "Run the ETL stage only: read, validate, clean, join, encode and split the input, and write the\n"
        "features (Parquet + Zarr) in a run directory. Prints that stage's directory.",
        "example:\n  shardflow etl -c job.yaml --n-workers 2 --memory-limit 2GB",
    ),
    "plan": (
        "Print how a job would run on the cluster: partitions, memory per worker, joins, warnings.\n"
        "Reads the input's metadata and runs nothing. Without -c, the default job (as `shardflow run`).",
        "examples:\n  shardflow plan -c job.yaml\n  shardflow plan --rows 30000 --work-dir shardflow-work",
    ),
    "predict": (
        "Score new data with a finished run's preprocessing and model; writes Parquet files.\n"
        "RUN is an id that `shardflow runs` lists, looked up in the runs directory as `shardflow run`\n"
        "finds it (--runs-dir, else the -c config's output.runs_dir, else ./shardflow-work/runs),\n"
        "or a run's directory.",
        "examples:\n"
        "  shardflow predict 20260101-120000-ab12cd --input new/*.csv --output scores/\n"
        "  shardflow predict --run shardflow-work/runs/20260101-120000-ab12cd --input new/ --output scores/ \\\n"
        "      --model mlp",
    ),
    "export": (
        "Write a run's preprocessing and model as one ONNX model (model.onnx, metadata.json), for serving\n"
        "elsewhere. RUN is an id that `shardflow runs` lists or a run's directory.",
        "examples:\n"
        "  shardflow export 20260101-120000-ab12cd --out exports/best\n"
        "  shardflow export --run 20260101-120000-ab12cd --out exports/mlp --model mlp --quantize int8",
    ),
    "report": (
        "Rebuild a run's report.html (config, data summary, model comparison, curves, per-partition\n"
        "metrics) and print its path. RUN is an id that `shardflow runs` lists or a run's directory.",
        "examples:\n"
        "  shardflow report 20260101-120000-ab12cd\n"
        "  shardflow report -c job.yaml --run 20260101-120000-ab12cd",
    ),
    "runs": (
        "List past runs, newest first, with their date, input, rows, stages and best model. The first\n"
        "column is the run's id, which report, export, predict and run --resume accept.",
        "examples:\n  shardflow runs\n  shardflow runs -c job.yaml           # the job's output.runs_dir",
    ),
    "generate": (
        "Write the synthetic trips dataset (Parquet files and trips.yaml, a job config for it).\n"
        "The same rows and seed give the same bytes.",
        "example:\n  shardflow generate --rows 20000000 --out data/trips-20m",
    ),
    "tune": TUNE_HELP,
}


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (override the config's cluster: section)")
    group.add_argument(
        "--cluster", metavar="SPEC", help="auto (default), local, local-cuda, or a scheduler address tcp://host:8786"
    )
    group.add_argument("--n-workers", type=int, metavar="N", help="worker processes of a local cluster")
    group.add_argument(
        "--threads-per-worker",
        type=int,
        metavar="N",
        help="threads per worker, also given to XGBoost, torch and BLAS inside it",
    )
    group.add_argument("--memory-limit", metavar="BYTES", help="per worker, e.g. 2GB")


def _add_config_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "-c",
        "--config",
        required=required,
        metavar="YAML",
        help="job config" + ("" if required else " (default: the built-in trips job)"),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set features.numeric=[a,b] (repeatable)",
    )
    parser.add_argument("--runs-dir", metavar="DIR", help="where run directories go (output.runs_dir)")
    parser.add_argument(
        "--allow-remote-cluster",
        action="store_true",
        help="let the config file's cluster: section name a scheduler on another host or a "
        "non-loopback interface (otherwise only the command line may)",
    )


def _add_default_job_options(parser: argparse.ArgumentParser, generated: str) -> None:
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help=f"rows of the default dataset{generated} (default {DEFAULT_ROWS:,})",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        metavar="DIR",
        help="where the default dataset and runs go (default ./shardflow-work)",
    )


def _add_run_argument(parser: argparse.ArgumentParser) -> None:
    """RUN, positional or ``--run`` (either, in every command), and where its id is looked up."""
    parser.add_argument(
        "run_positional",
        nargs="?",
        type=run_arg,
        metavar="RUN",
        help="a run id from `shardflow runs`, or a run directory",
    )
    parser.add_argument("--run", dest="run_option", type=run_arg, metavar="RUN", help="the same as RUN")
    _add_runs_dir_options(parser)


def _add_runs_dir_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runs directory (where run ids are; found as `shardflow run` finds it)")
    group.add_argument("--runs-dir", metavar="DIR", help="the runs directory itself")
    group.add_argument("-c", "--config", metavar="YAML", help="else the output.runs_dir of this job config")
    group.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        metavar="DIR",
        help="else DIR/runs (default ./shardflow-work)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardflow",
        description="Distributed ETL-plus-training pipelines on Dask (pandas or cuDF partitions).",
    )
    parser.add_argument("--version", action="version", version=f"shardflow {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, Dask's included")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # -q/-v also after the command (`shardflow run -q`); SUPPRESS keeps `shardflow -q run` working.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _parser = sub.add_parser

    def add_parser(name, **kwargs):
        description, epilog = COMMAND_HELP[name]
        made = _parser(
            name,
            parents=[common],
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )
        made.set_defaults(command_parser=made)
        return made

    sub.add_parser = add_parser

    run = sub.add_parser("run", help="the whole job (default dataset and job when no config is given)")
    _add_config_options(run, required=False)
    _add_default_job_options(run, ", generated when absent")
    run.add_argument(
        "--resume",
        type=run_arg,
        metavar="RUN",
        help="continue an interrupted run (an id from `shardflow runs`, or a run directory): current "
        "stages are kept, training resumes from checkpoints",
    )
    run.add_argument("--force", action="store_true", help="recompute every stage in a new run directory")
    run.add_argument(
        "--performance-report",
        action="store_true",
        help="save Dask's performance report (task stream, profile, bandwidth) in the run directory",
    )
    _add_cluster_options(run)
    add_tune_parser(sub, _add_config_options, _add_cluster_options, run_arg)

    etl = sub.add_parser("etl", help="the ETL stage: input → features (Parquet + Zarr)")
    _add_config_options(etl, required=True)
    _add_cluster_options(etl)

    plan = sub.add_parser(
        "plan", help="print how a job would run on the cluster (partitions, memory, warnings); runs nothing"
    )
    _add_config_options(plan, required=False)
    _add_default_job_options(plan, "")
    _add_cluster_options(plan)

    pred = sub.add_parser("predict", help="score new data with a finished run's preprocessing and model")
    _add_run_argument(pred)
    pred.add_argument("--input", required=True, metavar="PATH", help="Parquet file/directory or CSV glob")
    pred.add_argument("--output", required=True, type=path_or_url, metavar="PATH", help="output directory (Parquet)")
    pred.add_argument("--model", choices=family_names(), help="default: the run's best model on validation")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing --output directory")
    pred.add_argument(
        "--engine",
        choices=("shardflow", "onnxruntime"),
        default="shardflow",
        help="shardflow (default): the run's models; onnxruntime: the model exported as ONNX, one "
        "ONNX Runtime session per worker",
    )
    pred.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="with --engine onnxruntime: int8 scores with the dynamically quantized MLP",
    )
    pred.add_argument(
        "--explain",
        action="store_true",
        help="add each row's exact feature contributions (contribution_<feature>, contribution_bias; XGBoost models)",
    )
    pred.add_argument(
        "--fail-on-drift",
        action="store_true",
        help="fail, writing nothing, when a feature of the input drifted from the training rows (its PSI over "
        "--psi-threshold, or over 1%% of rows with categories never seen in training); without it drifted "
        "features are warnings and _drift.json in --output",
    )
    pred.add_argument(
        "--psi-threshold",
        type=float,
        metavar="PSI",
        help="population stability index over which a feature has drifted (default 0.2)",
    )
    _add_cluster_options(pred)

    exp = sub.add_parser("export", help="a run's preprocessing and model as one ONNX model, for serving elsewhere")
    _add_run_argument(exp)
    exp.add_argument("--model", choices=family_names(), help="default: the run's best model on validation")
    exp.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only format so far)")
    exp.add_argument(
        "--out", required=True, type=path_or_url, metavar="DIR", help="export directory (model.onnx, metadata.json)"
    )
    exp.add_argument("--quantize", choices=("int8",), help="also write model.int8.onnx (MLP families)")
    exp.add_argument(
        "--int8-tolerance",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="with --quantize int8: refuse an int8 model whose validation metric is worse than "
        "fp32's by more than this fraction of it (default 0.01)",
    )
    exp.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")

    rep = sub.add_parser("report", help="rebuild a run's report.html")
    _add_run_argument(rep)

    runs = sub.add_parser("runs", help="list past runs with their key metrics")
    _add_runs_dir_options(runs)

    gen = sub.add_parser("generate", help="write the synthetic trips dataset")
    gen.add_argument("--rows", type=int, required=True, help="rows to write")
    gen.add_argument("--out", type=Path, required=True, help="output directory (Parquet files and trips.yaml)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same bytes")
    gen.add_argument(
        "--rows-per-partition",
        type=int,
        default=None,
        help="rows per Parquet file (default: 8 files or more of 25,000 to 1,000,000 rows)",
    )
    gen.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    _add_cluster_options(gen)
    return parser


def _setup_logging(quiet: bool, verbose: bool, stream=None) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO

    def handler():
        # One per logger: Dask sets the level of the handlers on loggers it silences.
        made = logging.StreamHandler(stream or sys.stderr)
        made.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
        return made

    root = logging.getLogger("shardflow")
    root.handlers[:] = [handler()]
    root.setLevel(level)
    root.propagate = False
    if not verbose:
        for noisy in ("distributed", "dask"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    # The dashboard's errors (a traceback per failed page load; Dask's Groups page fails on a
    # released task group, an upstream bug) and asyncio's for the client's tasks a Ctrl-C
    # leaves unfinished reach the terminal only with -v, in shardflow's format. (Dask sets
    # these loggers up when imported: main() imports it first, so this comes last.)
    for web in (*DASHBOARD_LOGGERS, "tornado.application", "tornado.access", "tornado.general", "asyncio"):
        web_logger = logging.getLogger(web)
        web_logger.handlers[:] = [handler()]
        web_logger.propagate = False
        web_logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    # Python warnings (Dask's "Port 8787 is already in use ...", a library's deprecation)
    # print several raw lines to stderr; here each is one line of the job's log, once.
    warnings.showwarning = _log_warning


def _log_warning(message, category, *where, **more) -> None:
    """``warnings.showwarning`` for the command (``where``, ``more``: the file, line, stream
    and source line it is called with): the warning's kind and text in one log line."""
    logging.getLogger("shardflow.warnings").warning("%s: %s", category.__name__, " ".join(str(message).split()))


def path_or_url(value: str):
    """A command-line path: a local path, or an object-store URL (not folded by ``Path``)."""
    from shardflow.core.storage import check_url, location

    try:
        check_url(value, "")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).strip()) from None
    return location(value)


def run_arg(value: str) -> str:
    """A run on the command line: an id or a path, as typed (resolved by the command, which
    knows the runs directory); an object-store URL is checked here."""
    path_or_url(value)
    return value


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("shardflow")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `shardflow` alone: say what it can do, run nothing
        parser.print_help()
        return 0
    _merge_run(args)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the command that resumes a run
    # Imported before stderr is captured: Dask's log handlers, made at import, write to fd 2, which it reads.
    import distributed  # noqa: F401

    from shardflow.pipelines.interface.console import CapturedStderr, skip_exit_collections

    skip_exit_collections()
    if not CapturedStderr.possible():
        _setup_logging(args.quiet, args.verbose, open(os.devnull, "w"))  # noqa: SIM115 - lives with the process
        return _dispatch(args)
    with CapturedStderr() as console:
        _setup_logging(args.quiet, args.verbose, console.terminal)
        return _dispatch(args)


def _merge_run(args) -> None:
    """``args.run`` from RUN or ``--run`` (the same run if both are given; one is required)."""
    if not hasattr(args, "run_positional"):
        return
    given = {value for value in (args.run_positional, args.run_option) if value is not None}
    if len(given) > 1:
        args.command_parser.error(f"RUN {args.run_positional} and --run {args.run_option}: give the run once")
    if not given:
        args.command_parser.error("which run? give RUN (an id that `shardflow runs` lists, or a run directory)")
    args.run = given.pop()


def _dispatch(args) -> int:
    commands = {
        "run": cmd_run,
        "etl": cmd_etl,
        "generate": cmd_generate,
        "predict": cmd_predict,
        "export": cmd_export,
        "plan": cmd_plan,
        "report": cmd_report,
        "runs": cmd_runs,
        "tune": cmd_tune,
    }
    try:
        return commands[args.command](args)
    except ShardflowError as err:
        print(f"shardflow: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shardflow: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except ImportError as err:
        from shardflow.pipelines.interface.console import missing_extra

        message = missing_extra(err)
        if message is None:
            raise
        print(f"shardflow: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:
        from shardflow.cluster.factory import describe_failure

        message = describe_failure(err)
        if message is None:
            raise
        print(f"shardflow: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
