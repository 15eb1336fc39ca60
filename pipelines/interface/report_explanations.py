"""The report's explanations: which features each model relies on (``evaluate/explanations.json``,
:mod:`shardflow.pipelines.evaluation.explanations`)."""

from __future__ import annotations

import json

import numpy as np

from shardflow.pipelines.families.specs import label
from shardflow.pipelines.interface.figures import subplots
from shardflow.pipelines.interface.report_format import score
from shardflow.pipelines.interface.report_html import figure_html, format_cell, png_data_uri, table_html

#: Features shown per model, the most important first.
TOP_FEATURES = 12


def explanations_section(path, facts) -> str:
    """Mean absolute contribution per feature (XGBoost models, exact TreeSHAP), the best
    model's value-against-contribution summary, and permutation importance (the others).
    ``facts``: the run's :class:`~shardflow.pipelines.interface.report_format.TargetFacts`,
    which format each column in its quantity's units."""
    if not path.exists():
        return ""
    explained = json.loads(path.read_text())
    if not explained:
        return ""
    parts = ["<p class='muted'>XGBoost models: each feature's mean absolute contribution to the margin "
             "(log-odds, class score, or the transformed target), exact TreeSHAP on the validation split. "
             "Other models: how much the primary validation metric drops when the feature's values are "
             "permuted.</p>"]  # fmt: skip
    names = list(explained)
    table_rows, features = [], []
    for name in names:
        found = explained[name]
        values = found["mean_abs"] if found["kind"] == "contributions" else found["importance"]
        features = features or list(values)
        table_rows.append((name, found, values))
    order = sorted(features, key=lambda f: -max(abs(v.get(f, 0.0)) for _, _, v in table_rows))[:TOP_FEATURES]
    header = ["feature", *(f"{label(n)} ({'|contribution|' if f['kind'] == 'contributions' else 'metric drop'})"
                           for n, f, _ in table_rows)]  # fmt: skip
    rows = [[feature, *(float(v.get(feature, np.nan)) for _, _, v in table_rows)] for feature in order]
    parts.append(table_html(rows, header, [None, *(_column_format(found, facts) for _, found, _ in table_rows)]))
    contributions = [(n, f) for n, f, _ in table_rows if f["kind"] == "contributions"]
    if contributions:
        name, found = contributions[0]
        parts.append(
            figure_html(png_data_uri(_summary_plot(found, order[:8])), f"{label(name)}: contribution against value")
        )
    return "".join(parts)


def _column_format(found: dict, facts):
    """How one model's column reads: a metric drop in its metric's units (a regression's
    RMSE in the target's), a contribution in the margin's (the target's own units for an
    untransformed regression, to four significant digits; else log-odds or the transformed
    target, to four places)."""
    if found["kind"] == "permutation":
        return lambda value: facts.metric(found.get("metric", ""), value)
    if not facts.is_classification and facts.transform == "none":
        return format_cell  # the target's units, small contributions not rounded to 0
    return score


def _summary_plot(found: dict, features: list):
    """One row per feature: each sampled row's contribution (x), coloured by its value's rank."""
    fig, ax = subplots(figsize=(7, 0.45 * len(features) + 1.2))
    for i, feature in enumerate(reversed(features)):
        sample = found["sample"].get(feature, {"value": [], "contribution": []})
        c, v = np.asarray(sample["contribution"], float), np.asarray(sample["value"], float)
        if not len(c):
            continue
        rank = np.argsort(np.argsort(np.nan_to_num(v))) / max(len(v) - 1, 1)
        jitter = np.random.default_rng(i).uniform(-0.25, 0.25, len(c))
        ax.scatter(c, i + jitter, c=rank, cmap="coolwarm", s=6, alpha=0.7, linewidths=0)
    ax.set_yticks(range(len(features)))
    ax.set_yticklabels(list(reversed(features)))
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("contribution to the margin (colour: the feature's value, low blue, high red)")
    return fig
