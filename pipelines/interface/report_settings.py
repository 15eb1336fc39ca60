"""The run report's "Hyperparameters" section: what each family really trained with.

A config's ``train.xgboost.params: {}`` says nothing of the parameters XGBoost got: the
effective ones (shardflow's defaults, the target kind's objective and metrics, the
config's overrides) are in the family's record in the train stage (``<family>.json``),
with the MLP's architecture and the linear models' penalties. This section shows each
trained family's record — its settings, and what training ended with (rounds, best
round, convergence) — without its arrays, then the ``train:`` options of the config as
the run used them, every default filled in.
"""

from __future__ import annotations

import html
import json
import math

from shardflow.pipelines.families.specs import SPECS, label, spec
from shardflow.pipelines.interface.report_html import kv_table

#: Keys of a family's record that are data or timings, not settings (shown elsewhere, or too long).
SKIPPED = frozenset(
    {
        "history",
        "histories",
        "coef",
        "coef_even",
        "coef_odd",
        "columns",
        "codes",
        "numeric",
        "outputs",
        "newton_steps",
        "member_losses",
        "round_seconds",
        "seconds",
        "fit_seconds",
        "restarts",
        "resumed_from",
        "partition_metrics",
        "group_metrics",
        "weights",
        "keys",
        "groups",
        "fallback_groups",
        "samples",
        "one_task",
        "n_numeric",
        "cardinalities",
        "target_shift",
        "target_scale",
        "task",
    }
)
#: Keys of a record that say how training ended rather than what it was told.
OUTCOME = frozenset(
    {
        "rounds",
        "best_iteration",
        "best_epoch",
        "epochs",
        "converged",
        "stalled",
        "steps_per_epoch",
        "best_member",
        "fit_loss",
        "out_of_fold_loss",
        "average_loss",
        "best_member_loss",
    }
)
#: Lists longer than this are data, not a setting.
MAX_LIST = 12


def setting_text(value) -> str:
    """A setting's value as the page writes it.

    Examples
    --------
    >>> setting_text(0.003), setting_text(1e-4), setting_text([128, 64]), setting_text(None), setting_text(True)
    ('0.003', '0.0001', '128, 64', 'none', 'true')
    >>> setting_text(300), setting_text(30000), setting_text(0.30000000000000004)
    ('300', '30,000', '0.3')
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(setting_text(v) for v in value) if value else "[]"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return str(value)


def _scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _short_list(value) -> bool:
    """A list of a few names or whole numbers; fractions are a fit's trace (losses, steps), not a setting."""
    return (
        isinstance(value, list)
        and len(value) <= MAX_LIST
        and all(_scalar(v) and not (isinstance(v, float) and not v.is_integer()) for v in value)
    )


def flatten(record: dict, prefix: str = "") -> list:
    """``[(key, value)]`` of ``record``'s settings: scalars and short lists of names or whole
    numbers, nested dicts (XGBoost's ``params``, the MLP's ``spec``) flattened into the
    list, the :data:`SKIPPED` keys left out.

    Examples
    --------
    >>> flatten({"params": {"eta": 0.1, "eval_metric": ["auc"]}, "coef": [1.0], "rounds": 41, "objective": [0.5, 0.4]})
    [('eta', 0.1), ('eval_metric', ['auc']), ('rounds', 41)]
    """
    found = []
    for key, value in record.items():
        if key in SKIPPED:
            continue
        if isinstance(value, dict):
            # The record's own groups of settings (XGBoost's params, the MLP's spec) read without their prefix.
            found += flatten(value, prefix)
        elif _scalar(value) or _short_list(value):
            found.append((prefix + key, value))
    return found


def family_settings(record: dict) -> tuple:
    """``(settings, outcome)``: two lists of ``(key, text)`` from a family's record."""
    settings, outcome = [], []
    for key, value in flatten(record):
        text = label(value) if isinstance(value, str) and value in SPECS else setting_text(value)
        (outcome if key in OUTCOME else settings).append((key, text))
    if isinstance(record.get("weights"), list) and len(record["weights"]) > 1:
        outcome.append(("models", setting_text(len(record["weights"]))))
    if isinstance(record.get("fallback_groups"), list):
        outcome.append(("groups predicted by the fallback model", setting_text(len(record["fallback_groups"]))))
    return settings, outcome


def settings_section(run, names, config_text: str) -> str:
    """The section's body: one table per trained family, then the config's ``train:`` options.

    Parameters
    ----------
    run : RunDir
        The run directory (its train stage holds the records).
    names : list of str
        The trained families, in the report's order.
    config_text : str
        The run's ``config.yaml``.

    Returns
    -------
    str
        The HTML; empty when no family has a record.
    """
    tables = []
    for name in names:
        path = run.trained(spec(name).file())
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        settings, outcome = family_settings(record)
        body = kv_table(settings) if settings else "<p class='note'>No parameters of its own in its record.</p>"
        if outcome:
            body += "<p class='note'>Trained: " + html.escape("; ".join(f"{k} {v}" for k, v in outcome)) + "</p>"
        tables.append(f"<div><h3>{html.escape(label(name))}</h3>{body}</div>")
    if not tables:
        return ""
    parts = [
        "<p class='note'>The effective settings each family trained with, from its record in the train "
        "stage (shardflow's defaults, the target's objective and the config's overrides merged).</p>",
        "<div class='tables'>" + "".join(tables) + "</div>",
    ]
    train = _train_options(config_text)
    if train:
        parts.append(
            "<details><summary>The config's <code>train:</code> options, defaults filled in</summary>"
            + kv_table(train)
            + "</details>"
        )
    return "".join(parts)


def _train_options(config_text: str) -> list:
    """``[(train.key, text)]`` of the config's ``train:`` section, flattened."""
    import yaml

    try:
        train = (yaml.safe_load(config_text) or {}).get("train") or {}
    except yaml.YAMLError:
        return []

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", setting_text(value)

    return list(walk(train, "train.")) if isinstance(train, dict) else []
