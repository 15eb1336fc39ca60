"""The report's tuning section: the studies behind a tuned run (``tune/tune.json``, written by
:func:`shardflow.pipelines.tuning.search.tune`): each family's trials, the best against the
defaults, and the parameters' importances."""

from __future__ import annotations

import numpy as np

from shardflow.pipelines.interface.figures import integer_ticks, subplots
from shardflow.pipelines.interface.report_html import facts_html, figure_html, png_data_uri, table_html
from shardflow.pipelines.tuning.files import read_records


def tuning_section(run_dir) -> str:
    """Each study's facts, its trial history (each trial's value, the best so far), the best
    parameters beside the defaults, and the parameters' importances; empty for a run that
    was not tuned."""
    records = [record for record in read_records(run_dir) if record.get("best")]
    if not records:
        return ""
    config = _run_config(run_dir)
    return "".join(_study_html(record, config, heading=len(records) > 1) for record in records)


def _study_html(record: dict, config: dict, *, heading: bool) -> str:
    from shardflow.pipelines.families.specs import label

    metric, best, default = record["metric"], record["best"], record.get("default") or {}
    step = record.get("step", "round")
    where = (
        f"one per worker, side by side ({record.get('workers', '?')} workers)"
        if record["mode"] == "concurrent"
        else "one at a time, across all workers"
    )
    change = ""
    if default.get("value"):
        change = f"{100 * (best['value'] - default['value']) / abs(default['value']):+.1f}% against the defaults"
    facts = [
        (f"best validation {metric}", f"{best['value']:.5g}", f"trial {best['trial']}; {change}".rstrip("; ")),
        (f"defaults' {metric}", None if default.get("value") is None else f"{default['value']:.5g}", "trial 0"),
        ("trials", f"{record['finished']:,}", f"{record['pruned']:,} pruned, {record['failed']:,} failed"),
        ("trials ran", where, f"{record['seconds']:.0f} s in all"),
    ]
    trained = (
        "The run's models were trained with the best trial's parameters."
        if _trained_with(config, record.get("options") or {})
        else "The run was trained again since with other parameters (see its configuration)."
    )
    units = f" ({record['value_note']})" if record.get("value_note") else ""
    parts = [
        f"<h3>{label(record['family'])}</h3>" if heading else "",
        "<p class='muted'>Optuna's TPE sampler proposed each trial's parameters; a trial whose validation "
        f"{metric}{units} fell behind the finished trials' at the same {step} was pruned. {trained}</p>",
        facts_html(facts),
        figure_html(png_data_uri(_history_plot(record)), f"validation {metric} of each trial, and the best so far"),
    ]
    names = list(record.get("space") or best["params"])
    rows = [
        [name, _value(default.get("params", {}).get(name)), _value(best["params"].get(name)), record["space"].get(name)]
        for name in names
    ]
    parts.append(table_html(rows, ["parameter", "defaults", "best", "searched"]))
    importances = record.get("importances") or {}
    if importances:
        parts.append("<h3>Importance of each parameter (fANOVA over the completed trials)</h3>")
        parts.append(
            table_html(
                [[name, float(value)] for name, value in importances.items()],
                ["parameter", "share of the metric's variance"],
                [None, lambda v: f"{100 * v:.1f}%"],
            )
        )
    return "".join(parts)


def _run_config(run_dir) -> dict:
    """The run's resolved ``config.yaml`` as YAML reads it (empty when it has none)."""
    from shardflow.core.constraints import parse_yaml
    from shardflow.pipelines.records.rundir import RunDir

    path = RunDir(run_dir).config
    return (parse_yaml(path.read_text(), path) or {}) if path.exists() else {}


def _trained_with(config: dict, options: dict) -> bool:
    """Whether the run's configuration holds ``options`` (``{"train.mlp.lr": 0.01}``): what the
    best trial set, which the train stage trains with (a later run with other values rewrites it).

    Examples
    --------
    >>> _trained_with({"train": {"mlp": {"lr": 0.01}}}, {"train.mlp.lr": 0.01})
    True
    >>> _trained_with({"train": {"mlp": {"lr": 0.02}}}, {"train.mlp.lr": 0.01}), _trained_with({}, {})
    (False, False)
    """
    if not options:
        return False
    for key, value in options.items():
        found = config
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found != value:
            return False
    return True


def _value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _history_plot(record: dict):
    fig, ax = subplots(figsize=(7, 3.2))
    rows = record["history"]
    done = [(r["trial"], r["value"]) for r in rows if r["state"] == "COMPLETE"]
    pruned = [(r["trial"], r["reached"]) for r in rows if r["state"] == "PRUNED" and r["reached"] is not None]
    if done:
        ax.scatter(*np.array(done).T, s=18, color="#2f6db5", label="completed", zorder=3)
    if pruned:
        ax.scatter(*np.array(pruned).T, s=18, color="#b0b7c3", marker="x", label="pruned (best round)", zorder=3)
    steps = [(r["trial"], r["best_so_far"]) for r in rows if r["best_so_far"] is not None]
    if steps:
        ax.step(*np.array(steps).T, where="post", color="#d9822b", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {record['metric']}")
    integer_ticks(ax.xaxis)
    ax.legend(frameon=False, fontsize=8)
    return fig
