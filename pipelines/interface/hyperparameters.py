"""The hyperparameters of :class:`~shardflow.pipelines.interface.estimator.Estimator`: which keyword sets
which key of a job's ``train:`` section, and the job config they make, checked as the config's
own keys are (the constraints of :mod:`shardflow.core.constraints`)."""

from __future__ import annotations

import copy
import dataclasses
import difflib

from shardflow.core.constraints import Between, ConfigError, OneOf, build_section, coerce
from shardflow.core.numbers import number_problem
from shardflow.pipelines.setup.config import Config, load_config, validate
from shardflow.pipelines.setup.train_config import MLPConfig

#: XGBoost parameters an :class:`Estimator` takes, set in ``train.xgboost.params``: keyword →
#: (XGBoost's name, type, constraint). A keyword and XGBoost's name for it are aliases (one
#: parameter: ``learning_rate`` sets ``eta``); ``None`` removes the parameter (shardflow's default).
XGBOOST_PARAMS = {
    "max_depth": ("max_depth", int, Between(0)),
    "eta": ("eta", float, Between(0, 1)),
    "learning_rate": ("eta", float, Between(0, 1)),
    "min_child_weight": ("min_child_weight", float, Between(0)),
    "gamma": ("gamma", float, Between(0)),
    "min_split_loss": ("gamma", float, Between(0)),
    "subsample": ("subsample", float, Between(0, 1, open_low=True)),
    "colsample_bytree": ("colsample_bytree", float, Between(0, 1, open_low=True)),
    "colsample_bylevel": ("colsample_bylevel", float, Between(0, 1, open_low=True)),
    "colsample_bynode": ("colsample_bynode", float, Between(0, 1, open_low=True)),
    "reg_lambda": ("lambda", float, Between(0)),
    "lambda": ("lambda", float, Between(0)),
    "reg_alpha": ("alpha", float, Between(0)),
    "alpha": ("alpha", float, Between(0)),
    "max_bin": ("max_bin", int, Between(2)),
    "max_leaves": ("max_leaves", int, Between(0)),
    "max_delta_step": ("max_delta_step", float, Between(0)),
    "scale_pos_weight": ("scale_pos_weight", float, Between(0, open_low=True)),
    "grow_policy": ("grow_policy", str, OneOf(("depthwise", "lossguide"))),
}

#: Every hyperparameter keyword of :class:`Estimator` → the config key it sets. Names that
#: set the same key are aliases (give one). ``mlp_<option>`` sets ``train.mlp.<option>``.
HYPERPARAMETERS = {
    "models": "train.models",
    "seed": "train.seed",
    "random_state": "train.seed",
    "num_boost_round": "train.xgboost.num_boost_round",
    "n_estimators": "train.xgboost.num_boost_round",
    "early_stopping_rounds": "train.xgboost.early_stopping_rounds",
    **{name: f"train.xgboost.params.{xgb}" for name, (xgb, _, _) in XGBOOST_PARAMS.items()},
    **{f"mlp_{f.name}": f"train.mlp.{f.name}" for f in dataclasses.fields(MLPConfig)},
}


def check_names(names, error=ConfigError) -> None:
    """Refuse a name that is not a hyperparameter, or two aliases of one, in one line (``error``)."""
    for name in names:
        if name not in HYPERPARAMETERS:
            close = difflib.get_close_matches(name, [*HYPERPARAMETERS, "config", "runtime"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(
                f"Estimator has no parameter {name!r}{hint}; it takes config, runtime and the hyperparameters "
                f"{', '.join(HYPERPARAMETERS)}"
            )
    for name in names:
        twins = [n for n in names if n != name and HYPERPARAMETERS[n] == HYPERPARAMETERS[name]]
        if twins:
            raise error(
                f"Estimator: {name!r} and {twins[0]!r} are one parameter ({HYPERPARAMETERS[name]}); give one of them"
            )


def job_config(config, hyperparameters: dict) -> Config:
    """The job ``config`` with ``hyperparameters`` set (:data:`HYPERPARAMETERS`), validated.

    Parameters
    ----------
    config : Config, path or None
        A config (not changed), a YAML file, or None for the default job.
    hyperparameters : dict
        Keyword → value, as :class:`Estimator` takes them.

    Raises
    ------
    ConfigError
        Naming the keyword, its value and the config key: ``Estimator(n_estimators=0): config
        key 'train.xgboost.num_boost_round': must be at least 1, got 0``.

    Examples
    --------
    >>> job_config(None, {"learning_rate": 0.3, "models": ["xgboost"]}).train.xgboost.params
    {'eta': 0.3}
    """
    base = copy.deepcopy(config) if isinstance(config, Config) else load_config(config)
    if not hyperparameters:
        return base
    check_names(list(hyperparameters))
    raw = base.to_dict()
    try:
        for name, value in hyperparameters.items():
            *sections, last = HYPERPARAMETERS[name].split(".")
            node = raw
            for section in sections:
                node = node.setdefault(section, {})
            value = plain(value)
            if name in XGBOOST_PARAMS:
                xgb, kind, check = XGBOOST_PARAMS[name]
                for alias, (same, _, _) in XGBOOST_PARAMS.items():
                    if same == xgb:  # the file's spelling would win over ours in XGBoost's merge
                        node.pop(alias, None)
                if value is None:
                    continue
                value = coerce(value, kind, HYPERPARAMETERS[name])
                problem = check.problem(value) or number_problem(value)
                if problem:
                    raise ConfigError(f"config key '{HYPERPARAMETERS[name]}': {problem}")
            node[last] = value
        result = build_section(Config, raw, "")
        result.base_dir = base.base_dir
        validate(result)
    except ConfigError as err:
        named = [n for n in hyperparameters if f"'{HYPERPARAMETERS[n]}" in str(err)] or list(hyperparameters)
        given = ", ".join(f"{n}={hyperparameters[n]!r}" for n in named)
        raise ConfigError(f"Estimator({given}): {err}") from None
    return result


def plain(value):
    """``value`` with NumPy scalars as Python numbers and tuples as lists (what YAML holds)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value
