"""The ``shardflow tune`` sub-command's arguments (its handler is
:func:`~shardflow.pipelines.interface.commands.cmd_tune`)."""

from __future__ import annotations

from shardflow.pipelines.interface.commands import cmd_tune

__all__ = ["TUNE_HELP", "add_tune_parser", "cmd_tune"]

#: ``shardflow tune --help``: what it does (description) and examples (epilog).
TUNE_HELP = (
    "Search the hyperparameters of the global XGBoost and of the MLP (each that train.models lists;\n"
    "train.tune.families chooses), one Optuna study each (TPE sampler; bad trials pruned by their\n"
    "validation metric per round or per evaluation of the MLP's loss), then train and evaluate the\n"
    "job with the best of them. The ETL runs once (current features are reused); trials run one per\n"
    "worker when a trial's data fits one worker, else one at a time across all workers. The studies\n"
    "are kept in the run directory (tune/), so an interrupted tuning continues with --resume;\n"
    "train.tune in the config sets the search spaces, the pruner and the number of trials.",
    "examples:\n"
    "  shardflow tune -c job.yaml --trials 40\n"
    "  shardflow tune -c job.yaml --set train.tune.space.max_depth.high=6 --set train.tune.pruner=halving\n"
    "  shardflow tune -c job.yaml --set 'train.tune.families=[mlp]' --set train.tune.mlp_space.lr.high=0.01\n"
    "  shardflow tune -c job.yaml --trials 60 --resume 20260101-120000-ab12cd   # 20 more trials",
)


def add_tune_parser(sub, config_options, cluster_options, run_arg) -> None:
    """Declare ``shardflow tune`` on ``sub`` (the sub-parsers), with the shared option groups
    ``config_options(parser, required)`` and ``cluster_options(parser)`` and the RUN type ``run_arg``."""
    tune = sub.add_parser("tune", help="search the XGBoost's and the MLP's hyperparameters, then train with the best")
    config_options(tune, True)
    tune.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="trials each study should have finished (default: train.tune.trials, 40); a larger N "
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
