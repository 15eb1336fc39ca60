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
from shardflow.pipelines.commands import (
    cmd_etl,
    cmd_export,
    cmd_generate,
    cmd_plan,
    cmd_predict,
    cmd_report,
    cmd_run,
    cmd_runs,
)
from shardflow.pipelines.family_specs import family_names

DEFAULT_ROWS = 1_000_000
DEFAULT_WORK_DIR = Path("shardflow-work")


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
        return _parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser

    run = sub.add_parser("run", help="the whole job (default dataset and job when no config is given)")
    _add_config_options(run, required=False)
    run.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help=f"rows of the default dataset, generated when absent (default {DEFAULT_ROWS:,})",
    )
    run.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help="where the default dataset and runs go (default ./shardflow-work)",
    )
    run.add_argument(
        "--resume",
        type=path_or_url,
        metavar="RUN",
        help="continue an interrupted run: current stages are kept, training resumes from checkpoints",
    )
    run.add_argument("--force", action="store_true", help="recompute every stage in a new run directory")
    run.add_argument(
        "--performance-report",
        action="store_true",
        help="save Dask's performance report (task stream, profile, bandwidth) in the run directory",
    )
    _add_cluster_options(run)

    etl = sub.add_parser("etl", help="the ETL stage: input → features (Parquet + Zarr)")
    _add_config_options(etl, required=True)
    _add_cluster_options(etl)

    plan = sub.add_parser(
        "plan", help="print how a job would run on the cluster (partitions, memory, warnings); runs nothing"
    )
    _add_config_options(plan, required=True)
    _add_cluster_options(plan)

    pred = sub.add_parser("predict", help="score new data with a finished run's preprocessing and model")
    pred.add_argument("--run", required=True, type=path_or_url, metavar="RUN", help="run directory")
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
    exp.add_argument("run_dir", type=path_or_url, metavar="RUN", help="run directory")
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
    rep.add_argument("run_dir", type=path_or_url, metavar="RUN", help="run directory")

    runs = sub.add_parser("runs", help="list past runs with their key metrics")
    runs.add_argument(
        "--runs-dir",
        type=path_or_url,
        default=DEFAULT_WORK_DIR / "runs",
        help=f"directory of run directories (default {DEFAULT_WORK_DIR / 'runs'})",
    )

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
    # The dashboard's web server logs a traceback for every failed page load: the job's
    # terminal gets them only with -v, in shardflow's format. (Dask configures these
    # loggers when it is imported: main() imports it first, so this setting comes last.)
    for web in ("tornado", "tornado.application", "tornado.access", "tornado.general", "bokeh"):
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
    # Imported before stderr is captured: Dask's log handlers, made at import, then write
    # to file descriptor 2, where the capture reads them.
    import distributed  # noqa: F401

    from shardflow.pipelines.console import CapturedStderr

    if not CapturedStderr.possible():
        _setup_logging(args.quiet, args.verbose, open(os.devnull, "w"))  # noqa: SIM115 - lives with the process
        return _dispatch(args)
    with CapturedStderr() as console:
        _setup_logging(args.quiet, args.verbose, console.terminal)
        return _dispatch(args)


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
    }
    try:
        return commands[args.command](args)
    except ShardflowError as err:
        print(f"shardflow: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shardflow: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except Exception as err:
        from shardflow.cluster.factory import describe_failure

        message = describe_failure(err)
        if message is None:
            raise
        print(f"shardflow: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
