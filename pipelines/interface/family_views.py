"""How the model families look outside training: their curves in the report and their MLflow logging.

The presentation side of :data:`~shardflow.pipelines.families.registry.FAMILIES`: each function here
is an adapter a family binds by name (its ``curves`` or ``tracking``), reading the files
the family's training module wrote in the train stage (boosters, networks, per-round or
per-epoch metrics, the combiner's fit) and drawing them as report figures, or handing the
model to MLflow in the family's flavour. Training modules stay free of matplotlib and
MLflow, and no stage's code version covers this module, so editing a figure or a logged
model never invalidates a completed training stage.
"""

from __future__ import annotations

import json

from shardflow.pipelines.interface.figures import subplots
from shardflow.pipelines.interface.report_curves import epoch_lines, loss_scale, metric_panels, splits_note, target_of
from shardflow.pipelines.records.rundir import RunDir

# ----------------------------------------------------------------------------- linear baseline


def linear_curves(run_dir, family) -> list:
    """The penalised training loss per Newton pass, and the largest coefficients.

    Parameters
    ----------
    run_dir : path
        The run directory whose train stage holds the family's files.
    family : Family
        The family (its files' names and its label).

    Returns
    -------
    list of (Figure, str)
        The report's panels and their captions.
    """
    import numpy as np

    from shardflow.pipelines.interface.figures import integer_ticks

    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    fig, ax = subplots((5.8, 3.8))
    ax.plot(range(1, len(meta["objective"]) + 1), meta["objective"], marker="o")
    ax.set_xlabel("Newton pass (a rejected step is halved and tried again)")
    ax.set_ylabel("penalised loss, training rows")
    integer_ticks(ax.xaxis)
    ax.set_title(f"{family.label}: Newton fit")
    panels = [(fig, f"{family.label}: its damped Newton fit, one reduction over the partitions per pass")]
    coef = np.asarray(meta["coef"], dtype=np.float64)[1:]  # the intercept apart
    if len(coef):
        # One output: the signed coefficient; one per class: their norm (how much the feature moves the classes).
        size = coef[:, 0] if coef.shape[1] == 1 else np.linalg.norm(coef, axis=1)
        top = np.argsort(np.abs(size))[-20:]
        fig, ax = subplots((5.8, 0.3 * len(top) + 1.2))
        ax.barh([meta["columns"][1 + i] for i in top], size[top], color="#5b7fb5")
        ax.axvline(0, color="#555", lw=0.8)
        ax.set_xlabel(
            "coefficient (per standard deviation of a numeric)"
            if coef.shape[1] == 1
            else "norm of the class coefficients"
        )
        ax.set_title(f"Largest coefficients, {family.label}")
        panels.append((fig, f"The {family.label}'s largest coefficients (numerics standardised)"))
    return panels


# ----------------------------------------------------------------------------- global XGBoost


def global_xgboost_curves(run_dir, family) -> list:
    """Metrics per round, one axes per metric (training dashed where recorded, validation
    solid), the best round dotted; feature importance (gain).

    Parameters
    ----------
    run_dir : path
        The run directory whose train stage holds the family's files.
    family : Family
        The family (its files' names and its label).

    Returns
    -------
    list of (Figure, str)
        The report's panels and their captions.
    """
    import xgboost as xgb

    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    history = meta.get("history") or {}
    panels = []
    if history:
        fig = metric_panels([history], target_of(run_dir), best=meta.get("best_iteration"), title=family.label)
        panels.append((fig, f"{family.label}: metrics per boosting round{splits_note([history])}"))
    booster = xgb.Booster(model_file=bytearray(RunDir(run_dir).trained(family.file("ubj")).read_bytes()))
    gain = booster.get_score(importance_type="gain")
    if gain:
        top = sorted(gain.items(), key=lambda kv: kv[1])[-20:]
        fig, ax = subplots((5.8, 0.3 * len(top) + 1.2))
        ax.barh([k for k, _ in top], [v for _, v in top], color="#6a9f58")
        ax.set_xlabel("mean loss reduction per split (XGBoost gain)")
        ax.set_title(f"Feature importance, {family.label}")
        panels.append((fig, f"Feature importance (gain) of the {family.label}"))
    return panels


def global_xgboost_tracking(files, family, sample) -> dict:
    """MLflow: the effective XGBoost parameters, validation metrics per round, and the booster
    in MLflow's xgboost flavour (UBJSON) with its signature.

    Parameters
    ----------
    files
        The run's files, read through the manifest's hashes.
    family : Family
        The family (its files' names and its name in MLflow).
    sample : DataFrame
        Rows of the feature matrix, for the model's signature.

    Returns
    -------
    dict
        ``params``, ``curves`` (metric name to values per round) and
        ``log_model(run_id, model_id)``.
    """
    import xgboost as xgb

    meta = files.read_json(files.run.trained(family.file()))
    booster = xgb.Booster(model_file=bytearray(files.read_bytes(files.run.trained(family.file("ubj")))))

    def log_model(run_id: str, model_id: str):
        import mlflow.xgboost
        from mlflow.models import Model, infer_signature

        output = booster.predict(xgb.DMatrix(sample))
        Model.log(
            None,
            name=family.name,
            flavor=mlflow.xgboost,
            run_id=run_id,
            model_id=model_id,
            xgb_model=booster,
            model_format="ubj",
            signature=infer_signature(sample, output),
            # MLflow's own list for the flavour: inferring it loads the model in a subprocess (seconds).
            pip_requirements=mlflow.xgboost.get_default_pip_requirements(),
        )

    curves = {
        f"{family.name}.{split}.{metric}": values
        for split, by_metric in meta.get("history", {}).items()
        for metric, values in by_metric.items()
    }
    return {"params": meta.get("params") or {}, "curves": curves, "log_model": log_model}


# ----------------------------------------------------------------------------- data-parallel MLP


def data_parallel_mlp_curves(run_dir, family) -> list:
    """Training and validation loss per evaluation (an epoch, or a few short ones), in the
    target's units (a regression MLP trains on the standardised target).

    Parameters
    ----------
    run_dir : path
        The run directory whose train stage holds the family's files.
    family : Family
        The family (its files' names and its label).

    Returns
    -------
    list of (Figure, str)
        The report's panel and its caption.
    """
    from shardflow.pipelines.interface.figures import legend_below

    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    shown, unit = loss_scale(meta.get("spec", {}), target_of(run_dir))
    fig, ax = subplots((5.8, 3.8))
    epoch_lines(ax, meta["history"], shown)
    best = meta.get("best_epoch")
    epochs = meta["history"].get("epoch") or []
    if best is not None and 0 <= best < len(epochs):
        ax.axvline(epochs[best], color="k", ls=":", lw=0.8, label=f"best epoch ({epochs[best]}): weights kept")
    ax.set_ylabel(unit)
    ax.set_title(f"{family.label} ({meta['workers']} workers, sync every {meta['sync_every']} steps)", fontsize=10)
    legend_below(ax, ncol=2)
    return [(fig, f"{family.label}: {unit} per epoch, training and validation splits")]


def data_parallel_mlp_tracking(files, family, sample) -> dict:
    """MLflow: the network's architecture, losses per epoch, and the network in MLflow's
    pytorch flavour (feature matrix in; logits, or the standardised regression output, out).

    Parameters
    ----------
    files
        The run's files, read through the manifest's hashes.
    family : Family
        The family (its files' names and its name in MLflow).
    sample : DataFrame
        Rows of the feature matrix, for the model's signature and input example.

    Returns
    -------
    dict
        ``params`` (the network's spec), ``curves`` (metric name to values per
        evaluation) and ``log_model(run_id, model_id)``.
    """
    import numpy as np

    from shardflow.tasks.neural import MLPSpec, network

    meta = files.read_json(files.run.trained(family.file()))
    module = network(MLPSpec.from_dict(meta["spec"]), files.read_weights(files.run.trained(family.file("pt"))))

    def log_model(run_id: str, model_id: str):
        import mlflow.pytorch
        import torch
        from mlflow.models import Model, infer_signature

        x = np.ascontiguousarray(sample.to_numpy(), dtype=np.float32)
        module.eval()
        with torch.no_grad():
            output = module(torch.from_numpy(x)).numpy()
        # MLflow's ``pt2`` format (``torch.export``): a traced graph, not a pickled module.
        Model.log(
            None,
            name=family.name,
            flavor=mlflow.pytorch,
            run_id=run_id,
            model_id=model_id,
            pytorch_model=module,
            signature=infer_signature(x, output),
            input_example=x,
            serialization_format="pt2",
            # Given, not inferred (a subprocess that loads the model); the version without a local label (+cpu).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )

    curves = {f"{family.name}.{k}": v for k, v in meta.get("history", {}).items() if k not in ("seconds", "epoch")}
    return {"params": meta["spec"], "curves": curves, "log_model": log_model}


# ----------------------------------------------------------------------------- per-partition ensembles


def xgboost_ensemble_curves(run_dir, family) -> list:
    """Each per-partition booster's metrics per round on its own validation rows, one axes per metric.

    Parameters
    ----------
    run_dir : path
        The run directory whose train stage holds the family's files.
    family : Family
        The family (its files' names and its label).

    Returns
    -------
    list of (Figure, str)
        The report's panel and its caption; none when no member recorded a history.
    """
    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    histories = [h for h in meta.get("histories", []) if h]
    if not histories:
        return []
    fig = metric_panels(histories, target_of(run_dir), title=family.label)
    return [
        (
            fig,
            f"{family.label}: one line per member model ({len(histories)}), each on its own validation "
            f"rows{splits_note(histories)}",
        )
    ]


def mlp_ensemble_curves(run_dir, family) -> list:
    """Each per-partition network's training (dashed) and validation (solid) loss per epoch.

    Parameters
    ----------
    run_dir : path
        The run directory whose train stage holds the family's files.
    family : Family
        The family (its files' names and its label).

    Returns
    -------
    list of (Figure, str)
        The report's panel and its caption; none when no member recorded a history.
    """
    from shardflow.pipelines.interface.figures import TRAIN_STYLE, legend_below

    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    histories = [h for h in meta.get("histories", []) if h]
    if not histories:
        return []
    shown, unit = loss_scale(meta.get("spec", {}), target_of(run_dir))
    fig, ax = subplots((5.8, 3.8))
    for i, hist in enumerate(histories):
        epoch_lines(ax, hist, shown, color=f"C{i % 10}", lw=1.0, legend=False)
    ax.plot([], [], color="#555", label="training (mean over the epoch)", **TRAIN_STYLE)
    ax.plot([], [], color="#555", label="validation (own rows)")
    ax.set_ylabel(unit)
    ax.set_title(family.label, fontsize=10)
    legend_below(ax, ncol=2)
    return [(fig, f"{family.label}: {unit} per epoch, one colour per member model ({len(histories)})")]


# ----------------------------------------------------------------------------- combined and per-group families


def stacked_curves(run_dir, family) -> list:
    """The stacked combiner's penalised loss per Newton pass, from the members' average.

    Parameters
    ----------
    run_dir : path
        The run directory whose train stage holds the family's files.
    family : Family
        The family (its files' names and its label).

    Returns
    -------
    list of (Figure, str)
        The report's panel and its caption; none when the fit recorded no objective.
    """
    from shardflow.pipelines.interface.figures import integer_ticks

    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    if not meta.get("objective"):
        return []
    fig, ax = subplots((5.8, 3.8))
    ax.plot(range(1, len(meta["objective"]) + 1), meta["objective"], marker="o")
    ax.set_xlabel("Newton pass (a rejected step is halved and tried again)")
    ax.set_ylabel("penalised loss, validation rows")
    integer_ticks(ax.xaxis)
    ax.set_title(f"{family.label}: combiner fit", fontsize=10)
    return [(fig, f"{family.label}: its damped Newton fit, from the members' average")]


def group_curves(run_dir, family) -> list:
    """Each group model's metric on its own validation rows against its training rows, each
    point named by its group.

    Parameters
    ----------
    run_dir : path
        The run directory whose train stage holds the family's files.
    family : Family
        The family (its files' names and its label).

    Returns
    -------
    list of (Figure, str)
        The report's panel and its caption; none when no group has a metric to show.
    """
    from shardflow.pipelines.interface.figures import thousands
    from shardflow.pipelines.interface.report_format import TARGET_UNIT_METRICS
    from shardflow.tasks.metrics import primary_metric

    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    facts = target_of(run_dir)
    rows = [m for m in meta["group_metrics"] if m.get("rows")]
    wanted = primary_metric(facts.task) if facts.task else None
    metric = next((k for k in (wanted, "auc", "r2", "accuracy") if k and rows and k in rows[0]), None)
    if metric is None:
        return []
    fig, ax = subplots((5.8, 3.8))
    x, y = [m["train_rows"] for m in rows], [m[metric] for m in rows]
    ax.scatter(x, y, s=18, color="#1f77b4", zorder=3)
    if len(rows) <= 30:
        for m, xi, yi in zip(rows, x, y):
            ax.annotate(str(m.get("group", "")), (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7)
    if min(x) > 0 and max(x) > 10 * min(x):
        ax.set_xscale("log")
    ax.set_xlabel("training rows of the group")
    ax.set_ylabel(f"{facts.metric_header(metric)}, group's validation rows")
    if metric in TARGET_UNIT_METRICS:
        thousands(ax.yaxis)
    ax.set_title(family.label, fontsize=10)
    fallback = len(meta.get("fallback_groups", []))
    return [(fig, f"{family.label}: one point per group ({fallback} groups use the fallback model)")]
