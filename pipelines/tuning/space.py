"""Search spaces: the documented default ranges of the global XGBoost's parameters
(``train.tune.space``) and of the MLP's (``train.tune.mlp_space``), a config's overrides merged
over them, and the untuned job's own point in them.

Pure Python (no Optuna): the config validates a space without loading the tuning libraries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shardflow.core.constraints import ConfigError


@dataclass(frozen=True)
class Range:
    """One parameter's range: ``low``..``high`` (on a log scale with ``log``; whole numbers
    with ``integer``), or one of ``choices``.

    Examples
    --------
    >>> Range(2, 12, integer=True).describe()
    '2 to 12, whole numbers'
    >>> Range(choices=("depthwise", "lossguide")).describe()
    'one of depthwise, lossguide'
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        scale = ", log scale" if self.log else ""
        whole = ", whole numbers" if self.integer else ""
        return f"{_number(self.low)} to {_number(self.high)}{scale}{whole}"

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def nearest(self, value):
        """``value`` clipped into the range (whole for an integer range); None when it has no
        place in it (a choice not offered, a value that is no number)."""
        if self.choices is not None:
            return value if value in self.choices else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        clipped = min(max(value, self.low), self.high)
        return int(round(clipped)) if self.integer else float(clipped)


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


#: The default search space of the global XGBoost (``train.tune.space`` overrides any range,
#: removes one with ``null``, or adds another XGBoost parameter). The number of rounds is not
#: searched: early stopping on the validation split chooses it within
#: ``train.xgboost.num_boost_round``.
XGBOOST_SPACE = {
    "eta": Range(0.01, 0.3, log=True),
    "max_depth": Range(2, 12, integer=True),
    "min_child_weight": Range(0.1, 50.0, log=True),
    "subsample": Range(0.5, 1.0),
    "colsample_bytree": Range(0.5, 1.0),
    "lambda": Range(1e-3, 10.0, log=True),
    "alpha": Range(1e-8, 10.0, log=True),
}

#: XGBoost's other names of a searched parameter: a tuned value replaces them in ``params``.
ALIASES = {
    "eta": ("learning_rate",),
    "lambda": ("reg_lambda",),
    "alpha": ("reg_alpha",),
    "gamma": ("min_split_loss",),
    "learning_rate": ("eta",),
    "reg_lambda": ("lambda",),
    "reg_alpha": ("alpha",),
    "min_split_loss": ("gamma",),
}

#: XGBoost's own values of the searched parameters shardflow does not set: the default trial's.
XGBOOST_DEFAULTS = {"min_child_weight": 1.0, "subsample": 1.0, "colsample_bytree": 1.0, "lambda": 1.0, "alpha": 0.0}

#: Parameters shardflow sets from the job, never searched: what they are for.
FIXED = {
    "objective": "the target's kind (train.xgboost.params)",
    "eval_metric": "what early stopping watches (train.xgboost.params)",
    "num_class": "the target's classes",
    "seed": "train.seed",
    "device": "the cluster's backend",
    "nthread": "the workers' threads",
    "tree_method": "train.xgboost.params",
    "num_boost_round": "early stopping, within train.xgboost.num_boost_round",
    "n_estimators": "early stopping, within train.xgboost.num_boost_round",
    "num_parallel_tree": "train.xgboost.params",
}

#: The default search space of the MLP (``train.mlp``; ``train.tune.mlp_space`` overrides a
#: range, removes one with ``null``, or adds one of :data:`MLP_SEARCHABLE`). ``width`` is the
#: first hidden layer's width and ``layers`` the number of hidden layers, each half as wide as
#: the one before (at least :data:`MIN_LAYER_WIDTH`). The length is not searched: early
#: stopping on the validation loss chooses it within ``train.mlp.max_steps``.
MLP_SPACE = {
    "lr": Range(1e-4, 3e-2, log=True),
    "weight_decay": Range(1e-6, 1e-1, log=True),
    "dropout": Range(0.0, 0.5),
    "batch_size": Range(choices=(256, 512, 1024, 2048)),
    "width": Range(32, 512, log=True, integer=True),
    "layers": Range(1, 4, integer=True),
    "embedding_dim": Range(4, 32, log=True, integer=True),
}

#: The MLP's searchable parameters: the default space's, and these ``train.mlp`` options (which
#: need a whole range in ``train.tune.mlp_space``, e.g. ``momentum: {low: 0, high: 0.9}``).
MLP_SEARCHABLE = (*MLP_SPACE, "momentum", "optimizer", "lr_schedule", "warmup")

#: The narrowest hidden layer the ``width``/``layers`` parameters make.
MIN_LAYER_WIDTH = 8

#: ``train.mlp`` options never searched: what sets them instead.
MLP_FIXED = {
    "hidden": "width and layers (the first layer's width, and how many layers)",
    "epochs": "early stopping, within train.mlp.max_steps",
    "max_steps": "early stopping, within train.mlp.max_steps",
    "early_stopping_patience": "train.mlp.early_stopping_patience",
    "sync": "train.mlp.sync",
    "sync_every": "train.mlp.sync_every",
    "accumulation_steps": "train.mlp.accumulation_steps",
    "bf16": "train.mlp.bf16",
    "device": "the cluster's backend (train.mlp.device)",
}

#: The options of one range in a config, as :func:`merge_space` reads them.
RANGE_OPTIONS = ("low", "high", "log", "integer", "choices")


def merge_space(
    overrides: dict,
    defaults: dict | None = None,
    prefix: str = "train.tune.space",
    *,
    fixed: dict | None = None,
    known: tuple | None = None,
    checks: dict | None = None,
) -> dict:
    """The search space: ``defaults`` (:data:`XGBOOST_SPACE`) with a config's ``overrides``.

    Each override is a mapping of :data:`RANGE_OPTIONS` (or an object with them as attributes,
    None where unset) merged over the parameter's default range, or None to leave the
    parameter out. A parameter outside the defaults needs a whole range (``low`` and ``high``,
    or ``choices``). ``fixed`` names the parameters never searched (default: :data:`FIXED`),
    ``known`` the only ones that may be (None: any, as XGBoost's), and ``checks`` maps a
    parameter to the :class:`~shardflow.core.constraints.Constraint` every value of its range
    must meet (its config option's own).

    Raises
    ------
    ConfigError
        Naming the key (``train.tune.space.<parameter>``) and what it needs.

    Examples
    --------
    >>> space = merge_space({"max_depth": {"high": 6}, "alpha": None, "gamma": {"low": 0, "high": 5}})
    >>> space["max_depth"], "alpha" in space, space["gamma"].integer
    (Range(low=2, high=6, log=False, integer=True, choices=None), False, False)
    >>> merge_space({"max_depth": {"low": 9, "high": 3}})
    Traceback (most recent call last):
    ...
    shardflow.core.constraints.ConfigError: config key 'train.tune.space.max_depth': low (9) is above high (3)
    """
    defaults = XGBOOST_SPACE if defaults is None else defaults
    fixed = FIXED if fixed is None else fixed
    space = dict(defaults)
    for name, given in overrides.items():
        key = f"{prefix}.{name}"
        if name in fixed:
            raise ConfigError(f"config key '{key}': {name} is not searched; it comes from {fixed[name]}")
        if known is not None and name not in known:
            raise ConfigError(
                f"config key '{key}': {name} is not a parameter that can be searched; use one of {', '.join(known)}"
            )
        if given is None:
            space.pop(name, None)
            continue
        options = _options(given)
        base = defaults.get(name)
        if (
            base is None
            and options.get("choices") is None
            and (options.get("low") is None or options.get("high") is None)
        ):
            raise ConfigError(
                f"config key '{key}': {name} has no default range; give low and high (or choices), "
                f"e.g. {name}: {{low: 0, high: 5}}"
            )
        space[name] = _checked(key, _merged(base, options))
        if checks and name in checks:
            _meets(key, space[name], checks[name])
    if not space:
        raise ConfigError(f"config key '{prefix}': every parameter is left out; search at least one")
    return space


def _options(given) -> dict:
    if isinstance(given, dict):
        return {k: given.get(k) for k in RANGE_OPTIONS}
    return {k: getattr(given, k, None) for k in RANGE_OPTIONS}


def _merged(base: Range | None, options: dict) -> Range:
    if options.get("choices") is not None:
        return Range(choices=tuple(options["choices"]))
    base = base if base is not None and base.choices is None else Range()
    low = options["low"] if options.get("low") is not None else base.low
    high = options["high"] if options.get("high") is not None else base.high
    integer = options["integer"] if options.get("integer") is not None else base.integer
    log = options["log"] if options.get("log") is not None else base.log
    if integer:
        low, high = _whole(low), _whole(high)
    return Range(low, high, log=bool(log), integer=bool(integer))


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _checked(key: str, found: Range) -> Range:
    if found.choices is not None:
        if not found.choices:
            raise ConfigError(f"config key '{key}.choices': give at least one value")
        if any(isinstance(c, (list, dict)) for c in found.choices):
            raise ConfigError(f"config key '{key}.choices': each choice is a number, a string or a boolean")
        return found
    for bound in ("low", "high"):
        value = getattr(found, bound)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key '{key}.{bound}': expected a finite number, got {value!r}")
    if found.integer and not all(isinstance(v, int) for v in (found.low, found.high)):
        raise ConfigError(
            f"config key '{key}': a whole-number range needs whole bounds, got {found.low!r} and {found.high!r}"
        )
    if found.low > found.high:
        raise ConfigError(f"config key '{key}': low ({_number(found.low)}) is above high ({_number(found.high)})")
    if found.log and found.low <= 0:
        raise ConfigError(
            f"config key '{key}': a log-scale range must be above 0, got low {_number(found.low)}; "
            "raise low or set log: false"
        )
    return found


def _meets(key: str, found: Range, constraint) -> None:
    """Every end (or choice) of ``found`` meets the option's own ``constraint``."""
    values = found.choices if found.choices is not None else (found.low, found.high)
    for value in values:
        problem = constraint.problem(value)
        if problem:
            raise ConfigError(f"config key '{key}': {problem}")


def default_point(space: dict, params: dict) -> dict:
    """The point of ``space`` the untuned job trains with: ``params`` (shardflow's defaults and
    ``train.xgboost.params``, under any alias), else XGBoost's defaults; a value outside its range is
    clipped into it (XGBoost's ``alpha`` 0 becomes the log range's low end), and a parameter
    with no known default takes its range's middle (the first choice).

    Examples
    --------
    >>> point = default_point(XGBOOST_SPACE, {"reg_lambda": 2.0, "eta": 0.1, "max_depth": 8})
    >>> point["eta"], point["max_depth"], point["lambda"], point["alpha"]
    (0.1, 8, 2.0, 1e-08)
    """
    point = {}
    for name, found in space.items():
        names = (name, *ALIASES.get(name, ()))
        value = next((params[n] for n in names if n in params), None)
        if value is None:
            value = next((XGBOOST_DEFAULTS[n] for n in names if n in XGBOOST_DEFAULTS), None)
        placed = found.nearest(value) if value is not None else None
        if placed is None:
            placed = found.choices[0] if found.choices is not None else found.nearest(_middle(found))
        point[name] = placed
    return point


def _middle(found: Range) -> float:
    if found.log:
        return math.sqrt(found.low * found.high)
    return (found.low + found.high) / 2


def with_params(params: dict, tuned: dict) -> dict:
    """``params`` with the ``tuned`` values, their aliases removed (one name per parameter).

    Examples
    --------
    >>> with_params({"learning_rate": 0.3, "max_bin": 64}, {"eta": 0.05})
    {'max_bin': 64, 'eta': 0.05}
    """
    out = {k: v for k, v in params.items() if not any(k in ALIASES.get(t, ()) for t in tuned)}
    out.update(tuned)
    return out


def space_summary(space: dict) -> dict:
    """``{parameter: its range in words}`` (for tune.json and the report)."""
    return {name: found.describe() for name, found in space.items()}


def mlp_point(mlp) -> dict:
    """The ``train.mlp`` options (an object with them as attributes) as the MLP's searched
    parameters: ``width`` and ``layers`` from ``hidden``.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> mlp_point(SimpleNamespace(hidden=[128, 64], lr=0.003, batch_size=1024))["width"]
    128
    """
    point = {name: getattr(mlp, name) for name in MLP_SEARCHABLE if hasattr(mlp, name)}
    point.update(width=mlp.hidden[0] if mlp.hidden else MIN_LAYER_WIDTH, layers=len(mlp.hidden))
    return point


def mlp_options(hidden: list, tuned: dict) -> dict:
    """The ``train.mlp`` options a point of the MLP's space sets: its parameters, with
    ``width`` and ``layers`` as ``hidden`` (kept as it is when they describe it already).

    Examples
    --------
    >>> mlp_options([128, 64], {"width": 256, "layers": 3, "lr": 0.01})
    {'lr': 0.01, 'hidden': [256, 128, 64]}
    >>> mlp_options([100, 100], {"width": 100, "layers": 2})
    {'hidden': [100, 100]}
    """
    options = {k: v for k, v in tuned.items() if k not in ("width", "layers")}
    width = tuned.get("width", hidden[0] if hidden else MIN_LAYER_WIDTH)
    layers = tuned.get("layers", len(hidden))
    if hidden and (width, layers) == (hidden[0], len(hidden)):
        options["hidden"] = list(hidden)
    else:
        options["hidden"] = [max(MIN_LAYER_WIDTH, int(width) >> i) for i in range(int(layers))]
    return options
