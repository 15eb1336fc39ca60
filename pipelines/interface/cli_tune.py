"""The ``shardflow tune`` sub-command's arguments (its handler is
:func:`~shardflow.pipelines.interface.commands.cmd_tune`)."""

from __future__ import annotations

from shardflow.pipelines.interface.commands import cmd_tune

__all__ = ["TUNE_HELP", "add_tune_parser", "cmd_tune"]

#: ``shardflow tune --help``: what it does (description) and examples (epilog).
TUNE_HELP = (
    "Search the global XGBoost's hyperparameters (Optuna's TPE sampler, bad trials pruned by their\n"
    "per-round validation metric), then train and evaluate the job with the best of them. The ETL\n"
    "runs once (current features are reused); trials run one per worker when a trial's data fits\n"
    "one worker, else one at a time across all workers. The study is kept in the run directory\n"
    "(tune/), so an interrupted tuning continues with --resume; train.tune in the config sets the\n"
    "search space, the pruner and the number of trials.",
    "examples:\n"
    "  shardflow tune -c job.yaml --trials 40\n"
    "  shardflow tune -c job.yaml --set train.tune.space.max_depth.high=6 --set train.tune.pruner=halving\n"
    "  shardflow tune -c job.yaml --trials 60 --resume 20260101-120000-ab12cd   # 20 more trials",
)


def add_tune_parser(sub, config_options, cluster_options, run_arg) -> None:
    """Declare ``shardflow tune`` on ``sub`` (the sub-parsers), with the shared option groups
    ``config_options(parser, required)`` and ``cluster_options(parser)`` and the RUN type ``run_arg``."""
    tune = sub.add_parser("tune", help="search the global XGBoost's hyperparameters, then train with the best")
    config_options(tune, True)
    tune.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="trials the study should have finished (default: train.tune.trials, 40); a larger N "
        "continues a finished study",
    )
    tune.add_argument(
        "--resume",
        type=run_arg,
        metavar="RUN",
        help="continue an interrupted tuning (an id from `shardflow runs`, or a run directory): its "
        "finished trials are kept",
    )
    tune.add_argument("--force", action="store_true", help="start over in a new run directory (ETL and study)")
    cluster_options(tune)
