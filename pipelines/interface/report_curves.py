"""Training-curve panels the families' report views share (:mod:`shardflow.pipelines.interface.family_views`).

Metrics per boosting round get one axes per metric (AUC and log loss never share one),
training dashed and validation solid where both are recorded, the best round dotted; a
network's losses are shown per epoch in the target's units (a regression MLP trains on
the standardised target: its loss is shown as the RMSE of the target, or of its
transform); rounds and epochs are whole numbers on their axes.
"""

from __future__ import annotations

from shardflow.pipelines.interface.figures import TRAIN_STYLE, integer_ticks, legend_below, subplots
from shardflow.pipelines.interface.report_format import metric_name, target_facts
from shardflow.pipelines.records.rundir import RunDir


def target_of(run_dir):
    """The run's target: its name, kind and units (axes say them)."""
    return target_facts(RunDir(run_dir))


def round_lines(ax, per_split: dict, *, best=None, label=None, **style) -> None:
    """One metric's values per round of each split (training dashed, validation solid) on
    ``ax``, rounds counted from 1, the best round dotted. A split recorded for fewer rounds
    (the train split of a model resumed from an older checkpoint) ends at the last round."""
    rounds = max((len(values) for values in per_split.values()), default=0)
    for split, values in per_split.items():
        extra = TRAIN_STYLE if split == "train" else {}
        first = rounds - len(values) + 1
        ax.plot(range(first, rounds + 1), values, label=label or f"{split} split", **{**style, **extra})
    if best is not None:
        ax.axvline(best + 1, color="k", ls=":", lw=0.8, label=f"best round ({best + 1})")
    ax.set_xlabel("boosting round")
    integer_ticks(ax.xaxis)


def metric_panels(histories: list, facts, *, best=None, title: str):
    """A figure with one axes per metric of XGBoost ``histories`` (``{split: {metric: values}}``
    each): AUC and log loss never share an axis."""
    metrics = list(dict.fromkeys(m for h in histories for split in h.values() for m in split))
    rows = max(1, len(metrics))
    fig, axes = subplots((5.8, 1.0 + 2.4 * rows), nrows=rows, squeeze=False, sharex=True)
    for ax, metric in zip(axes[:, 0], metrics):
        for i, hist in enumerate(histories):
            per_split = {split: by[metric] for split, by in hist.items() if metric in by}
            style = {"lw": 1.6} if len(histories) == 1 else {"lw": 0.8, "alpha": 0.6, "color": f"C{i % 10}"}
            round_lines(ax, per_split, best=best, **style)
        ax.set_ylabel(facts.model_metric_label(metric))
        ax.set_xlabel("")
    axes[-1, 0].set_xlabel("boosting round")
    axes[0, 0].set_title(f"{title}: {', '.join(metric_name(m) for m in metrics)}", fontsize=10)
    if len(histories) == 1:
        legend_below(axes[-1, 0], ncol=3)
    return fig


def splits_note(histories: list) -> str:
    """What the curves' splits are: the train split is measured on a sample (see
    :data:`shardflow.tasks.models.TRAINING_CURVE_ROWS`); runs trained before it was
    recorded have the validation split only."""
    recorded = {split for h in histories for split in h}
    if "train" not in recorded:
        return " (training stage records the validation split only)"
    from shardflow.tasks.models import TRAINING_CURVE_ROWS

    return (
        f"; train split dashed (every k-th training row, at most {TRAINING_CURVE_ROWS:,} per model or "
        "training process), validation split solid"
    )


def loss_scale(spec: dict, facts):
    """The MLP's loss as the report shows it: ``(to_shown, axis label)``. Classifiers' loss is
    the log loss already; a regression MLP's is the mean squared error of the standardised
    target, shown as the RMSE of the target (or its transform) in its own units."""
    import math

    from shardflow.tasks.targets import target_kind

    task = spec.get("task") or facts.task
    if target_kind(task).is_classification:
        return (lambda values: list(values)), "log loss"
    scale = float(spec.get("target_scale", 1.0))
    return (lambda values: [math.sqrt(max(v, 0.0)) * scale for v in values]), facts.model_metric_label("rmse")


def epoch_lines(ax, history: dict, shown, *, color=None, lw=1.6, legend=True) -> None:
    """Training (dashed) and validation (solid) loss per evaluation, at whole epochs."""
    validation = history.get("validation_loss") or []
    train = history.get("train_loss") or []
    epochs = history.get("epoch") or list(range(1, max(len(train), len(validation)) + 1))
    if train:
        ax.plot(
            epochs[: len(train)],
            shown(train),
            marker="o",
            ms=3,
            lw=lw,
            color=color,
            label="training (mean over the epoch)" if legend else None,
            **TRAIN_STYLE,
        )
    if validation:
        ax.plot(
            epochs[: len(validation)],
            shown(validation),
            marker="o",
            ms=3,
            lw=lw,
            color=color,
            label="validation" if legend else None,
        )
    ax.set_xlabel("epoch")
    integer_ticks(ax.xaxis)
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
