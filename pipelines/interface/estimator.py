"""A scikit-learn style face of a job: ``Estimator(config, max_depth=6).fit(X, y)``, then ``predict``.

``fit`` runs the whole job (ETL, training, evaluation) on a DataFrame instead of files. The
ETL reads files (Parquet footers give the plan, byte ranges and row groups the partitions,
file identities the stage keys that make a run resumable), so ``fit`` first writes the
frame once as Parquet under ``<runs_dir>/.inputs/<token>/``, one file per partition, named
by Dask's token of the frame: fitting the same frame again finds its files, and its run.

Hyperparameters are keyword arguments that set keys of the job's ``train:`` section
(:mod:`shardflow.pipelines.interface.hyperparameters`), checked as the config's own keys are; they are
stored as given (scikit-learn's contract), so ``get_params``, ``set_params``, ``sklearn.base.clone`` and
``GridSearchCV`` work. scikit-learn is imported by the methods that need it only.
"""

from __future__ import annotations

import copy
import logging

from shardflow.core.errors import InputError, ShardflowError
from shardflow.core.storage import StorePath
from shardflow.pipelines.families.registry import FAMILIES, Deferred
from shardflow.pipelines.interface.hyperparameters import HYPERPARAMETERS, check_names, job_config
from shardflow.pipelines.records.ownership import prepare_runs_dir
from shardflow.pipelines.records.rundir import COMMIT_FILE, atomic_directory
from shardflow.pipelines.setup.config import Config

logger = logging.getLogger("shardflow.estimator")

#: The prediction function of a family whose model is one XGBoost booster (the global XGBoost).
ONE_BOOSTER = Deferred("tasks.models", "predict_booster")


class Estimator:
    """One shardflow job as a scikit-learn estimator (a classifier or a regressor, as
    ``target.task`` says).

    Parameters
    ----------
    config : Config, path or None
        The job (its ``input.path`` is replaced by the frame given to :meth:`fit`); None: the
        default job (``data/trips.yaml``).
    runtime : Runtime or distributed.Client, optional
        Where the job runs (default: a cluster from ``config.cluster``, closed after ``fit``).
    **hyperparameters
        Keys of the job's ``train:`` section, over the config's values (the table is
        :data:`~shardflow.pipelines.interface.hyperparameters.HYPERPARAMETERS`): ``models`` →
        ``train.models``; ``seed`` or ``random_state`` → ``train.seed``; ``num_boost_round`` or
        ``n_estimators`` → ``train.xgboost.num_boost_round``; ``early_stopping_rounds`` →
        ``train.xgboost.early_stopping_rounds``; XGBoost parameters (``max_depth``,
        ``learning_rate`` or ``eta``, ``subsample``, ``colsample_bytree``, ``min_child_weight``,
        ``reg_lambda``, ``reg_alpha``, ``gamma``, ``max_bin``, ...:
        :data:`~shardflow.pipelines.interface.hyperparameters.XGBOOST_PARAMS`) →
        ``train.xgboost.params.<XGBoost's name>``; ``mlp_<option>`` → ``train.mlp.<option>``
        (``mlp_hidden``, ``mlp_lr``, ``mlp_epochs``, ...). A value is what the YAML would hold
        (``None`` is ``null``; for an XGBoost parameter, shardflow's default). Values are
        checked by :meth:`fit`, as the config's own keys are; an unknown name, or two names of
        one key, is a ``TypeError`` here.

    Attributes
    ----------
    run_dir_ : path
        The run directory ``fit`` produced (a later job with other training options may
        retrain in it; ``model_`` keeps this fit's model).
    metrics_ : dict
        Validation metrics of every trained model.
    model_ : TrainedModel
        The run's best model on validation (:func:`shardflow.load_model`); it predicts.
    classes_ : ndarray
        Classification: the labels, typed as the target holds them (numbers, booleans,
        strings), in the order of ``predict_proba``'s columns.
    feature_names_in_ : ndarray of str
        The columns of ``X`` at ``fit`` but the target and the weight; an array given to
        ``predict`` holds them in this order.
    n_features_in_ : int
        Their number.
    feature_names_ : list of str
        The model's features (after joins, derived columns, datetime parts and encoding).
    feature_importances_ : ndarray
        The global XGBoost's gain importances over ``feature_names_``, summing to 1 (an
        ``AttributeError`` when the best model is another family).

    Examples
    --------
    >>> import dask.dataframe as dd, shardflow
    >>> estimator = shardflow.Estimator("job.yaml", models=["xgboost"], max_depth=6)
    >>> estimator
    Estimator('job.yaml', models=['xgboost'], max_depth=6)
    >>> estimator.fit(dd.read_parquet("s3://lake/trips/")).predict(new_rows)  # doctest: +SKIP
    array([False,  True, False])
    """

    def __init__(self, config=None, *, runtime=None, **hyperparameters):
        # Stored as given (scikit-learn's contract); only the names are checked here, values in fit.
        check_names(list(hyperparameters), TypeError)
        self.config = config
        self.runtime = runtime
        for name, value in hyperparameters.items():
            setattr(self, name, value)

    def _hyperparameters(self) -> dict:
        return {name: value for name, value in vars(self).items() if name in HYPERPARAMETERS}

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments: ``config``, ``runtime`` and the hyperparameters given.

        Parameters
        ----------
        deep : bool
            Unused (no parameter is an estimator); scikit-learn's signature.

        Returns
        -------
        dict
        """
        return {"config": self.config, "runtime": self.runtime, **self._hyperparameters()}

    def set_params(self, **params) -> Estimator:
        """Set parameters as the constructor takes them; a hyperparameter replaces its aliases
        (``learning_rate`` replaces an ``eta`` given before).

        Returns
        -------
        Estimator
            ``self``.

        Raises
        ------
        ValueError
            An unknown name, or two aliases of one parameter.
        """
        check_names([name for name in params if name not in ("config", "runtime")])
        for name, value in params.items():
            if name in HYPERPARAMETERS:
                for alias in [n for n in self._hyperparameters() if HYPERPARAMETERS[n] == HYPERPARAMETERS[name]]:
                    delattr(self, alias)
            setattr(self, name, value)
        return self

    def __sklearn_clone__(self) -> Estimator:
        # The runtime is a shared, connected cluster: the clone uses it, not a copy of it.
        params = self.get_params(deep=False)
        runtime = params.pop("runtime")
        return type(self)(runtime=runtime, **copy.deepcopy(params))

    def __repr__(self) -> str:
        params = self.get_params(deep=False)
        config = params.pop("config")
        if params["runtime"] is None:
            del params["runtime"]
        if isinstance(config, Config):
            config = f"<Config: target {config.target.column!r} ({config.target.task})>"
        else:
            config = repr(str(config)) if config is not None else None
        shown = ([config] if config is not None else []) + [f"{k}={v!r}" for k, v in params.items()]
        return f"{type(self).__name__}({', '.join(shown)})"

    def _config(self) -> Config:
        return job_config(self.config, self._hyperparameters())

    def _classifies(self) -> bool:
        from shardflow.tasks.targets import target_kind

        task = self.model_.task if hasattr(self, "model_") else job_config(self.config, {}).target.task
        return target_kind(task).is_classification

    @property
    def _estimator_type(self) -> str:  # scikit-learn before 1.6 asks this
        return "classifier" if self._classifies() else "regressor"

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, InputTags, RegressorTags, Tags, TargetTags

        classifies = self._classifies()
        return Tags(
            estimator_type=self._estimator_type,
            target_tags=TargetTags(required=False),  # the target may be a column of X
            classifier_tags=ClassifierTags() if classifies else None,
            regressor_tags=None if classifies else RegressorTags(),
            input_tags=InputTags(allow_nan=True, categorical=True, string=True),
        )

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
        from shardflow.pipelines.serving.model import ARROW_REFUSALS, load_model, table_column_error
        from shardflow.tasks.labels import decode_labels

        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("__")]:
            delattr(self, name)  # a failed fit leaves no earlier fit's attributes behind
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
        model = load_model(result.run_dir, storage_options=config.storage_options)
        self.run_dir_, self.metrics_, self.model_ = result.run_dir, result.metrics, model
        names = [str(c) for c in X.columns if c not in (target, config.target.weight)]
        self.feature_names_in_, self.n_features_in_ = np.asarray(names, dtype=object), len(names)
        self.feature_names_ = list(model.preprocessor.feature_names)
        if self._classifies():
            keys = model.preprocessor.classes
            self.classes_ = decode_labels(np.arange(len(keys)), keys, model.preprocessor.label_type)
        # Now, from this fit's files: a later job with other training options may retrain in this run.
        self._importances_ = gain_importances(result.run_dir, model.name, self.feature_names_)
        return self

    @property
    def feature_importances_(self):
        """The global XGBoost's gain importances over ``feature_names_``, normalised to sum 1."""
        if not hasattr(self, "model_"):
            raise AttributeError("feature_importances_: this Estimator is not fitted yet; call fit(X) first")
        if self._importances_ is None:
            raise AttributeError(
                f"feature_importances_: the fitted model is {self.model_.name!r}, which has no feature "
                "importances; only the global XGBoost has them (set models to it alone to fit it)"
            )
        return self._importances_.copy()

    def predict(self, X):
        """Predicted labels (classification, typed as ``classes_``) or values (regression).

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or array-like
            Rows with the input columns; an array holds ``feature_names_in_`` in that order.

        Returns
        -------
        numpy.ndarray or dask.array.Array
            One value per row (a Dask array for a Dask DataFrame). A row the ETL would
            quarantine gets a missing value (``None`` among labels, NaN among values).
        """
        import numpy as np

        model, frame = self._fitted(), self._frame(X)
        dtype = self.classes_.dtype if self._classifies() else np.dtype(float)
        out = model.predict(frame)
        if hasattr(out, "npartitions"):
            return out.map_partitions(prediction_values, dtype, meta=np.empty((0,), dtype=dtype))
        return prediction_values(out, dtype)

    def predict_proba(self, X):
        """Class probabilities, one column per class in the order of ``classes_`` (rows sum
        to 1; NaN for a row the ETL would quarantine), as a NumPy array (a Dask array for a
        Dask DataFrame)."""
        import numpy as np

        model, frame = self._fitted(), self._frame(X)
        out = model.predict_proba(frame)
        if hasattr(out, "npartitions"):
            return out.map_partitions(probability_values, meta=np.empty((0, len(model.classes)), dtype=float))
        return probability_values(out)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Accuracy (classification) or R² (regression) of ``predict(X)``, as scikit-learn's.

        ``y`` defaults to ``X``'s column ``target.column``. Labels compare as the ETL compares
        them (``1``, ``1.0`` and ``"1"`` are one class). Rows without a prediction (the ETL
        would quarantine them) are left out, with a warning.

        Returns
        -------
        float
        """
        import numpy as np
        import pandas as pd
        from sklearn.metrics import accuracy_score, r2_score

        from shardflow.tasks.labels import label_keys

        if y is None:
            target = self._fitted().preprocessor.target
            if not isinstance(X, pd.DataFrame) or target not in X.columns:
                raise InputError(f"Estimator.score: give y, or a pandas X with the target column {target!r}")
            y = X[target]
        predicted = self.predict(X)
        predicted = pd.Series(predicted.compute() if hasattr(predicted, "compute") else predicted, dtype=object)
        truth = pd.Series(np.asarray(y, dtype=object))
        if len(truth) != len(predicted):
            raise InputError(f"Estimator.score: y has {len(truth)} values and X {len(predicted)} rows")
        kept = predicted.notna().to_numpy()
        if not kept.all():
            logger.warning("score: %d row(s) without a prediction are left out", int((~kept).sum()))
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=float)[kept]
        truth, predicted = truth[kept], predicted[kept]
        if self._classifies():
            return float(
                accuracy_score(
                    label_keys(truth).astype(object), label_keys(predicted).astype(object), sample_weight=weight
                )
            )
        return float(r2_score(truth.astype(float), predicted.astype(float), sample_weight=weight))

    def _frame(self, X):
        """``X`` as a DataFrame: an array-like holds ``feature_names_in_``, in that order."""
        import dask.dataframe as dd
        import numpy as np
        import pandas as pd

        if isinstance(X, (pd.DataFrame, dd.DataFrame)):
            return X
        values = np.asarray(X)
        if values.ndim != 2 or values.shape[1] != self.n_features_in_:
            raise InputError(
                f"Estimator: X has shape {values.shape}; an array needs {self.n_features_in_} columns, in the "
                f"order of fit's X ({', '.join(self.feature_names_in_)}), or give a DataFrame"
            )
        return pd.DataFrame(values, columns=list(self.feature_names_in_)).infer_objects()

    def _fitted(self):
        if not hasattr(self, "model_"):
            raise ShardflowError("this Estimator is not fitted yet: call fit(X) first")
        return self.model_


def prediction_values(out, dtype):
    """The labels (``predicted_label``) or values (``prediction``) of a prediction frame as a
    NumPy array of ``dtype``; an object array with ``None`` where a prediction is missing."""
    import numpy as np

    from shardflow.tasks.labels import LABEL, PREDICTION

    column = out[LABEL] if LABEL in out.columns else out[PREDICTION]
    if dtype.kind == "f":
        return column.to_numpy(dtype=float, na_value=np.nan)
    if column.isna().any():
        return column.astype(object).where(column.notna(), None).to_numpy()
    return column.to_numpy(dtype=dtype)


def probability_values(out):
    """A ``predict_proba`` frame as a float array, NaN where a prediction is missing."""
    import numpy as np

    return out.to_numpy(dtype=float, na_value=np.nan)


def gain_importances(run_dir, name: str, features: list):
    """Gain importances of the run's model ``name`` over ``features``, summing to 1 (all 0
    for a model without a split), if it is one XGBoost booster; else None."""
    if FAMILIES[name].predictor() != ONE_BOOSTER:
        return None
    import numpy as np
    import xgboost

    from shardflow.pipelines.records import trained_models

    booster = xgboost.Booster()
    booster.load_model(bytearray(trained_models.load_model(run_dir, name)["model"]))
    gain = booster.get_score(importance_type="gain")
    # Keyed by the booster's feature names when it has them, else by XGBoost's f0, f1, ... in the model's order.
    names = features if booster.feature_names else [f"f{i}" for i in range(len(features))]
    values = np.array([gain.get(n, 0.0) for n in names], dtype=float)
    total = values.sum()
    return values / total if total > 0 else values
