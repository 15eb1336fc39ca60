"""The report's tuning section: the study behind a tuned run (``tune/tune.json``, written by
:func:`shardflow.pipelines.tuning.search.tune`): its trials, the best against the defaults,
and the parameters' importances."""

from __future__ import annotations

import numpy as np

from shardflow.pipelines.interface.figures import integer_ticks, subplots
from shardflow.pipelines.interface.report_html import facts_html, figure_html, png_data_uri, table_html
from shardflow.pipelines.tuning.files import read_record


def tuning_section(run_dir) -> str:
    """The study's facts, its trial history (each trial's value, the best so far), the best
    parameters beside the defaults, and the parameters' importances; empty for a run that
    was not tuned."""
    record = read_record(run_dir)
    if not record or not record.get("best"):
        return ""
    metric, best, default = record["metric"], record["best"], record.get("default") or {}
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
        if _trained_with(run_dir, record.get("family"), best["params"])
        else "The run was trained again since with other parameters (see its configuration)."
    )
    parts = [
        "<p class='muted'>Optuna's TPE sampler proposed each trial's parameters; a trial whose per-round "
        f"validation {metric} fell behind the finished trials' was pruned. {trained}</p>",
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


def _trained_with(run_dir, family: str | None, params: dict) -> bool:
    """Whether the run's trained ``family`` (its train record) used ``params``."""
    import json

    from shardflow.pipelines.families.specs import SPECS
    from shardflow.pipelines.records.rundir import RunDir

    if family not in SPECS:
        return False
    path = RunDir(run_dir).trained(SPECS[family].file())
    used = json.loads(path.read_text()).get("params", {}) if path.exists() else {}
    return all(used.get(name) == value for name, value in params.items())


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
