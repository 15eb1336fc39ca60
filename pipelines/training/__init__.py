"""The training stage, one module per job.

- :mod:`~shardflow.pipelines.training.data`: the ETL output placed on the workers;
- :mod:`~shardflow.pipelines.training.xgboost_global` and
  :mod:`~shardflow.pipelines.training.collective`: the global XGBoost model (allreduce);
- :mod:`~shardflow.pipelines.training.partitions`: per-partition models;
- :mod:`~shardflow.pipelines.training.mlp`: the data-parallel MLP, and
  :mod:`~shardflow.pipelines.training.mlp_setup`: the MLP families' network and optimizer;
- :mod:`~shardflow.pipelines.training.stacking`: the stacked combiner;
- :mod:`~shardflow.pipelines.training.linear`: the linear baseline (Newton passes over reductions);
- :mod:`~shardflow.pipelines.training.checkpoint` and
  :mod:`~shardflow.pipelines.training.xgboost_checkpoint`: checkpoints of the global models.

What runs on a worker lives in :mod:`shardflow.tasks`.
"""

from shardflow.pipelines.training.data import TrainingData, call_token, load_training_data, sorted_workers
from shardflow.pipelines.training.mlp import train_data_parallel_mlp
from shardflow.pipelines.training.mlp_setup import mlp_optim_for, mlp_spec_for
from shardflow.pipelines.training.partition_graph import partition_groups, train_partition_models
from shardflow.pipelines.training.stacking import fit_stacker
from shardflow.pipelines.training.xgboost_global import train_global_xgboost, xgboost_params

__all__ = [
    "TrainingData",
    "call_token",
    "fit_stacker",
    "load_training_data",
    "mlp_optim_for",
    "mlp_spec_for",
    "partition_groups",
    "sorted_workers",
    "train_data_parallel_mlp",
    "train_global_xgboost",
    "train_partition_models",
    "xgboost_params",
]
