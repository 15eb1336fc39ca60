"""How the run report writes numbers: by what they count or measure, never one format for all.

Counts are integers with thousands separators, durations are seconds to a tenth, sizes are
humanised bytes, shares are percentages, unitless scores (AUC, log loss, R²) have four
decimals, and values in the target's units (a price, a duration, its RMSE and MAE) have
the precision the target's own spread calls for (:class:`TargetFacts`). Every table and
axis of the report (:mod:`shardflow.pipelines.interface.report` and the modules it draws with) takes
its formats from here, so one quantity reads the same everywhere on the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Metrics measured in the target's units (the others are unitless scores).
TARGET_UNIT_METRICS = ("rmse", "mae")

#: How a transformed target is written (``log1p`` of ``price``: ``log(1 + price)``).
TRANSFORM_NAMES = {"log1p": "log(1 + {})"}

#: How metrics are written in headers and on axes.
METRIC_NAMES = {
    "auc": "AUC",
    "logloss": "log loss",
    "mlogloss": "log loss",
    "accuracy": "accuracy",
    "error": "error rate",
    "merror": "error rate",
    "macro_f1": "macro F1",
    "macro_auc": "macro AUC (one vs rest)",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R²",
}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def count(value) -> str:
    """A count: an integer with thousands separators (a weighted count keeps one decimal).

    Examples
    --------
    >>> count(1234567), count(48.0), count(12.25), count(None), count(float("nan"))
    ('1,234,567', '48', '12.2', '', '–')
    """
    if value is None or value == "":
        return ""
    if not _finite(value):
        return "–"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def seconds(value) -> str:
    """A duration in seconds, to a tenth.

    Examples
    --------
    >>> seconds(4.5650), seconds(0.0213), seconds(1234.56), seconds(None)
    ('4.6', '<0.1', '1,234.6', '')
    """
    if value is None or value == "":
        return ""
    if not _finite(value):
        return "–"
    return "<0.1" if 0 < value < 0.05 else f"{value:,.1f}"


def nbytes(value) -> str:
    """A size in bytes, humanised (binary prefixes).

    Examples
    --------
    >>> nbytes(2_000_000_000), nbytes(612999168), nbytes(512)
    ('1.86 GiB', '584.60 MiB', '512 B')
    """
    if not _finite(value):
        return "–" if value not in (None, "") else ""
    from dask.utils import format_bytes

    return format_bytes(int(value))


def share(value, digits: int = 1) -> str:
    """A share (0..1) as a percentage.

    Examples
    --------
    >>> share(0.35249), share(1.0), share(float("nan"))
    ('35.2%', '100.0%', '–')
    """
    return f"{100 * value:.{digits}f}%" if _finite(value) else "–"


def score(value, digits: int = 4) -> str:
    """A unitless score (AUC, log loss, accuracy, R²), to ``digits`` decimals.

    Examples
    --------
    >>> score(0.836999), score(float("nan")), score(None)
    ('0.8370', '–', '')
    """
    if value is None or value == "":
        return ""
    return f"{value:.{digits}f}" if _finite(value) else "–"


def decimals_for(spread: float) -> int:
    """Decimals that show a value to about 1/100 of ``spread`` (a target's standard deviation).

    Examples
    --------
    >>> decimals_for(8700.0), decimals_for(450.0), decimals_for(2.5), decimals_for(0.03), decimals_for(0.0)
    (0, 0, 2, 4, 2)
    """
    if not _finite(spread) or spread <= 0:
        return 2
    return int(min(6, max(0, 2 - math.floor(math.log10(spread)))))


def metric_name(name: str) -> str:
    """A metric's name as the page writes it (``rmse`` → ``RMSE``)."""
    return METRIC_NAMES.get(name, name)


@dataclass(frozen=True)
class TargetFacts:
    """What the report says about the target: its column, kind, classes, spread and units.

    Built by :func:`target_facts` from the ETL's files (``preprocessor.json``, ``summary.json``).

    Attributes
    ----------
    column : str
        The target column ("target" when unknown).
    task : str
        The resolved target kind (see :mod:`shardflow.tasks.targets`).
    transform : str
        The transform the models were trained under (``none``, ``log1p``).
    classes : list
        The class labels (classification), the positive class last of two.
    counts : dict
        Rows per class among the kept rows (classification).
    mean, std, low, high : float
        The target's mean, standard deviation and range over the kept rows (regression).
    weighted : bool
        Whether sample weights weigh the metrics.
    """

    column: str = "target"
    task: str = ""
    transform: str = "none"
    classes: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    mean: float = float("nan")
    std: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    weighted: bool = False

    @property
    def is_classification(self) -> bool:
        from shardflow.tasks.targets import target_kind

        try:
            return target_kind(self.task).is_classification
        except KeyError:
            return bool(self.classes)

    @property
    def positive(self):
        """The positive class of a binary target (the second one), else None."""
        return self.classes[1] if len(self.classes) == 2 else None

    @property
    def unit(self) -> str:
        """The target's name as an axis says it (its units, when a regression target)."""
        return self.column

    @property
    def model_scale(self) -> str:
        """What the models were trained on: the target, or its transform (``log(1 + price)``)."""
        if self.transform == "none":
            return self.column
        return TRANSFORM_NAMES.get(self.transform, self.transform + "({})").format(self.column)

    def value(self, v) -> str:
        """A value in the target's units, to about 1/100 of its standard deviation.

        Examples
        --------
        >>> TargetFacts("price", std=8700.0).value(548.7313), TargetFacts("y", std=0.4).value(0.123456)
        ('549', '0.123')
        """
        if v is None or v == "":
            return ""
        if not _finite(v):
            return "–"
        return f"{v:,.{decimals_for(self.std if _finite(self.std) else abs(v))}f}"

    def metric(self, name: str, v) -> str:
        """Metric ``name``'s value: in the target's units, or a unitless score."""
        return self.value(v) if name in TARGET_UNIT_METRICS else score(v)

    def model_metric_label(self, name: str) -> str:
        """A training metric's axis label: on the scale the models trained on (``RMSE of
        log(1 + price)`` under a transform), where the metric has the target's units.

        Examples
        --------
        >>> TargetFacts("price", transform="log1p").model_metric_label("rmse")
        'RMSE of log(1 + price)'
        >>> TargetFacts("price").model_metric_label("rmse"), TargetFacts("y").model_metric_label("logloss")
        ('RMSE (price)', 'log loss')
        """
        if name not in TARGET_UNIT_METRICS:
            return metric_name(name)
        if self.transform == "none":
            return f"{metric_name(name)} ({self.unit})"
        return f"{metric_name(name)} of {self.model_scale}"

    def metric_header(self, name: str) -> str:
        """A metric's column title, with the target's units where it has them (``RMSE (price)``)."""
        return f"{metric_name(name)} ({self.unit})" if name in TARGET_UNIT_METRICS else metric_name(name)


def target_facts(run) -> TargetFacts:
    """The run's :class:`TargetFacts`, from its ETL files (empty ones when they are missing).

    Parameters
    ----------
    run : RunDir
        The run directory.
    """
    from shardflow.pipelines.records.manifest import EtlSummary

    summary = EtlSummary.read(run.summary)
    found = {}
    if run.preprocessor.exists():
        from shardflow.tasks.encode import Preprocessor

        pre = Preprocessor.from_json(run.preprocessor.read_text())
        found = {
            "column": pre.target,
            "task": pre.task,
            "transform": pre.target_transform,
            "classes": [str(c) for c in pre.classes],
            "weighted": bool(pre.weighted),
        }
    if summary:
        found.setdefault("task", summary.task)
        found["counts"] = {str(k): v for k, v in (summary.classes or {}).items()}
        if not found.get("classes"):
            found["classes"] = list(found["counts"])
        if not found["counts"]:
            found.update(mean=summary.target_mean, std=summary.target_std, low=summary.target_min)
            found["high"] = summary.target_max
    return TargetFacts(**found)
