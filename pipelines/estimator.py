"""A scikit-learn style face of a job: ``Estimator(config).fit(ddf)``, then ``predict``.

``fit`` runs the whole job (ETL, training, evaluation) on a DataFrame instead of files. The
ETL reads files (Parquet footers give the plan, byte ranges and row groups the partitions,
file identities the stage keys that make a run resumable), so ``fit`` first writes the
frame once as Parquet under ``<runs_dir>/.inputs/<token>/``, one file per partition, named
by Dask's token of the frame: fitting the same frame again finds its files, and its run.
"""

from __future__ import annotations

import copy
import logging

from shardflow.pipelines.config import Config, load_config
from shardflow.pipelines.ownership import prepare_runs_dir
from shardflow.pipelines.rundir import COMMIT_FILE, atomic_directory
from shardflow.tasks.errors import InputError
from shardflow.tasks.storage import StorePath

logger = logging.getLogger("shardflow.estimator")


class Estimator:
    """One shardflow job as an estimator.

    Parameters
    ----------
    config : Config, path or None
        The job (its ``input.path`` is replaced by the frame given to :meth:`fit`); None: the
        default job (``data/trips.yaml``).
    runtime : Runtime or distributed.Client, optional
        Where the job runs (default: a cluster from ``config.cluster``, closed after ``fit``).

    Attributes
    ----------
    run_dir_ : path
        The run directory ``fit`` produced.
    metrics_ : dict
        Validation metrics of every trained model.
    model_ : TrainedModel
        The run's best model on validation (:func:`shardflow.load_model`).

    Examples
    --------
    >>> import dask.dataframe as dd, shardflow
    >>> estimator = shardflow.Estimator("job.yaml").fit(dd.read_parquet("s3://lake/trips/"))  # doctest: +SKIP
    >>> estimator.predict(new_rows)  # doctest: +SKIP
    """

    def __init__(self, config=None, *, runtime=None):
        self.config = config
        self.runtime = runtime

    def get_params(self, deep: bool = True) -> dict:
        return {"config": self.config, "runtime": self.runtime}

    def set_params(self, **params) -> Estimator:
        for name, value in params.items():
            if name not in ("config", "runtime"):
                raise ValueError(f"Estimator has no parameter {name!r}; it takes config and runtime")
            setattr(self, name, value)
        return self

    def _config(self) -> Config:
        if isinstance(self.config, Config):
            return copy.deepcopy(self.config)
        return load_config(self.config)

    def fit(self, X, y=None) -> Estimator:
        """Run the job on ``X`` (a Dask or pandas DataFrame with the config's input columns;
        ``y``, if given, is the target column ``target.column``: for a pandas ``X`` any
        sequence, paired by position; for a Dask ``X`` a Dask Series partitioned as ``X``). A
        named index becomes a column.

        Returns
        -------
        Estimator
            ``self``, fitted.
        """
        import dask.dataframe as dd
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        from dask.base import tokenize

        from shardflow.pipelines.job import run
        from shardflow.pipelines.model import ARROW_REFUSALS, load_model, table_column_error

        config = self._config()
        target = config.target.column
        if isinstance(X, pd.DataFrame):
            X = X.reset_index() if any(name is not None for name in X.index.names) else X
            if y is not None:  # by position, as scikit-learn pairs X and y
                values = np.asarray(y)
                if len(values) != len(X):
                    raise InputError(f"Estimator.fit: y has {len(values)} values and X {len(X)} rows")
                X = X.assign(**{target: values})
            try:  # a column Arrow cannot hold fails here, named, not in the Parquet writer's traceback
                pa.Schema.from_pandas(X, preserve_index=False)
            except ARROW_REFUSALS as err:
                raise table_column_error(X, err, "Estimator.fit") from None
            X = dd.from_pandas(X, npartitions=max(1, -(-len(X) // 1_000_000)), sort=False)
        elif isinstance(X, dd.DataFrame):
            X = X.reset_index() if X.index.name is not None else X
            if y is not None:
                if not isinstance(y, dd.Series):
                    raise InputError(
                        f"Estimator.fit: X is a Dask DataFrame and y a {type(y).__name__}; give y "
                        f"as a Dask Series partitioned as X, or put column {target!r} in X"
                    )
                X = X.assign(**{target: y})
        else:
            raise InputError(f"Estimator.fit: X is a {type(X).__name__}; give a pandas or Dask DataFrame")
        if config.target.expression is None and config.target.column not in X.columns:
            raise InputError(
                f"Estimator.fit: X has no column {config.target.column!r} (target.column); add it, or pass y"
            )
        table = prepare_runs_dir(config.runs_dir) / ".inputs" / tokenize(X, config.storage_options)[:16]
        # In an object store a table is complete once its commit object is there.
        if not (table / COMMIT_FILE if isinstance(table, StorePath) else table).exists():
            logger.info("fit: writing the %d partitions of X as Parquet to %s", X.npartitions, table)
            with atomic_directory(table) as tmp:
                X.to_parquet(
                    str(tmp),
                    write_index=False,
                    storage_options=getattr(tmp, "storage_options", None),
                    name_function=lambda i: f"part-{i:05d}.parquet",
                )
        config.input.path, config.input.format = str(table), "parquet"
        result = run(config, runtime=self.runtime)
        self.run_dir_, self.metrics_ = result.run_dir, result.metrics
        self.model_ = load_model(result.run_dir, storage_options=config.storage_options)
        return self

    def predict(self, X):
        """:meth:`TrainedModel.predict <shardflow.pipelines.model.TrainedModel.predict>` of the best model."""
        return self._fitted().predict(X)

    def predict_proba(self, X):
        """:meth:`TrainedModel.predict_proba <shardflow.pipelines.model.TrainedModel.predict_proba>`."""
        return self._fitted().predict_proba(X)

    def _fitted(self):
        if not hasattr(self, "model_"):
            from shardflow.tasks.errors import ShardflowError

            raise ShardflowError("this Estimator is not fitted yet: call fit(X) first")
        return self.model_
