"""Tuning: the search of the global XGBoost's parameters (``shardflow tune``, :func:`shardflow.tune`).

- :mod:`~shardflow.pipelines.tuning.space`: the default search space and a config's overrides
  (pure Python: the config validates ``train.tune`` without loading Optuna);
- :mod:`~shardflow.pipelines.tuning.study`: Optuna's sampler and pruner, the study stored in
  the run directory, the ask/tell loop;
- :mod:`~shardflow.pipelines.tuning.trials`: how trials use the cluster (side by side, one per
  worker, or one at a time across all workers);
- :mod:`~shardflow.pipelines.tuning.search`: :func:`~shardflow.pipelines.tuning.search.tune`,
  the ETL once, the study, and the run trained with the best parameters.

What runs on a worker lives in :mod:`shardflow.tasks.tuning`.
"""
