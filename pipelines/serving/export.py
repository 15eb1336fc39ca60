"""``shardflow export``: a run's scoring path as one self-contained ONNX model.

The model holds the fitted preprocessing and the chosen family's models
(:mod:`shardflow.tasks.onnx_graph`); ``metadata.json`` beside it names the inputs and
outputs, the opsets, the source run and its metrics, and what the export measured: the
largest difference from shardflow's own predictions on validation rows of the run's
input, and with ``--quantize int8`` the quantized MLP's metric, size and latency change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from dask.utils import format_bytes

from shardflow.core.errors import ShardflowError
from shardflow.core.storage import location
from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.records import trained_models
from shardflow.pipelines.records.manifest import stage_of
from shardflow.pipelines.records.ownership import new_output_dir
from shardflow.pipelines.records.rundir import RunDir, atomic_directory, read_manifest
from shardflow.pipelines.serving.export_inputs import JoinsOutside, graph_inputs, input_plan
from shardflow.pipelines.setup.config import load_config
from shardflow.tasks.encode import Preprocessor
from shardflow.tasks.exported import INT8_FILE, METADATA_FILE, MODEL_FILE, ExportedModel
from shardflow.tasks.metric_sums import Scoring, metric_direction
from shardflow.tasks.metrics import finish_metrics, partial_metrics, primary_metric
from shardflow.tasks.schema import SPLIT_COLUMN
from shardflow.tasks.targets import target_kind

logger = logging.getLogger("shardflow.export")

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
#: The largest difference from shardflow's own predictions an export may show.
TOLERANCE = 1e-4
#: The default of ``--int8-tolerance``: int8 may cost at most 1% of the fp32 validation metric.
INT8_TOLERANCE = 0.01


class ExportError(ShardflowError):
    """A run that cannot be exported as asked (the message says why and what to do)."""


@dataclass
class ExportResult:
    path: Path
    model: str
    metadata: dict


def export(
    run_dir,
    out_dir,
    *,
    model: str | None = None,
    quantize: str | None = None,
    overwrite: bool = False,
    check_rows: int = 20_000,
    storage_options: dict | None = None,
    int8_tolerance: float = INT8_TOLERANCE,
) -> ExportResult:
    """Export one model of a finished run, with its preprocessing, as ONNX.

    Parameters
    ----------
    run_dir : path
        A run directory with a completed ``train`` stage.
    out_dir : path
        The export directory (``model.onnx``, ``metadata.json``, with ``quantize`` also
        ``model.int8.onnx``); it appears only when complete.
    model : str, optional
        The family; default the run's best model on validation.
    quantize : {"int8"}, optional
        Dynamic int8 quantization of the MLP's weights (ONNX Runtime's ``quantize_dynamic``).
        The int8 model is scored on the same validation rows as the check; an int8 model
        whose validation metric is worse than fp32's by more than ``int8_tolerance`` is
        refused (nothing is written).
    int8_tolerance : float
        The largest relative loss of the validation metric (AUC, log loss or RMSE) that
        ``quantize="int8"`` accepts: ``0.01`` is 1% of fp32's value; ``1`` accepts any, and
        an int8 model that cannot be measured (the run's input is not readable here).
    check_rows : int
        Validation rows of the run's input scored both ways to check the export.
    storage_options : dict, optional
        Options of the object store's file system for ``run_dir``, ``out_dir`` and the run's
        input (credentials from the environment).

    Examples
    --------
    >>> export("runs/20261122-101500-ab12cd", "exports/mlp", model="mlp", quantize="int8")  # doctest: +SKIP
    """
    _require_onnx()
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize {quantize}: not one of {', '.join(QUANTIZATIONS)}")
    if not (isinstance(int8_tolerance, (int, float)) and 0 <= int8_tolerance <= 1):
        raise ExportError(
            f"--int8-tolerance {int8_tolerance}: a fraction of the fp32 metric in [0, 1], e.g. 0.01 "
            "(1: any loss, and an unmeasured one)"
        )
    run_dir = location(run_dir, storage_options)
    files = trained_models.scoring_files(run_dir, model, option="export")  # checked against the manifest
    if quantize == "int8" and not FAMILIES[files.model].quantizable:
        raise ExportError(
            f"--quantize int8: quantizes the MLP families' weights; {files.model} has no matrix "
            "products (a tree model: its thresholds are exact already): export it without --quantize"
        )
    out = new_output_dir(location(out_dir, storage_options), "--out", overwrite, keep={"run": run_dir})
    model, payload, preprocessor, metrics = files.model, files.payload, files.preprocessor, files.metrics
    family = FAMILIES[model]
    # The caller's storage options, never the run's: a run directory does not choose what is reached.
    config = load_config(files.config_path, ["storage_options={}", "cluster={}"])
    config.storage_options = dict(storage_options or {})
    kind = target_kind(preprocessor.task)
    started = time.perf_counter()
    plan = input_plan(config, run_dir)
    onnx_model, inputs = build(preprocessor, family, payload, kind, plan=plan)
    metadata = describe(
        onnx_model,
        preprocessor,
        config=config,
        family=family,
        run_dir=run_dir,
        metrics=metrics["metrics"].get(model, {}),
        inputs=inputs,
    )
    fp32 = onnx_model.SerializeToString()
    logger.info("export: %s as ONNX (%s), %.1fs", model, format_bytes(len(fp32)), time.perf_counter() - started)
    rows = validation_rows(plan, check_rows)
    files = {MODEL_FILE: fp32}
    if rows is None:
        metadata["check"] = {"skipped": "the run's input is not readable here"}
        logger.warning(
            "export: the run's input %s is not readable here: the export is not checked against "
            "shardflow's predictions%s",
            config.input.path,
            ", and its joins stay outside the graph (send the joined columns)" if config.joins else "",
        )
    else:
        metadata["check"] = compare(ExportedModel(fp32, metadata), rows, preprocessor, family, payload)
        if not (metadata["check"]["max_abs_difference"] <= TOLERANCE and metadata["check"]["labels_agree"] >= 0.999):
            raise ExportError(
                f"export of {model}: its predictions differ from shardflow's by up to "
                f"{metadata['check']['max_abs_difference']:.3g} on {len(rows)} validation rows "
                f"(tolerance {TOLERANCE}) and agree on {100 * metadata['check']['labels_agree']:.2f}% "
                "of the labels; please report this"
            )
        logger.info(
            "export: on %d validation rows, largest difference from shardflow's predictions %.2g",
            len(rows),
            metadata["check"]["max_abs_difference"],
        )
    if quantize == "int8":
        if rows is None and int8_tolerance < 1:
            raise ExportError(
                "--quantize int8: the run's input is not readable here, so what int8 costs cannot be "
                "measured; export where it is readable, or pass --int8-tolerance 1 to accept it unmeasured"
            )
        files[INT8_FILE] = quantize_int8(fp32)
        if rows is not None:
            metadata["quantization"] = quantization_report(
                fp32, files[INT8_FILE], metadata=metadata, rows=rows, preprocessor=preprocessor, kind=kind
            )
            check_quantization(metadata["quantization"], int8_tolerance, rows=len(rows))
    metadata["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    with atomic_directory(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=float))
    logger.info("export: %s → %s", model, out)
    return ExportResult(out, model, metadata)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError(f'ONNX export needs {err.name}: pip install "shardflow[export]"') from None


def build(preprocessor: Preprocessor, family, payload: dict, kind, plan=None):
    """The ONNX model (preprocessing, the family's models, the outputs; checked by ``onnx``)
    and what :func:`~shardflow.pipelines.serving.export_inputs.graph_inputs` built into it
    (None: the joins are outside the graph, as without ``plan``)."""
    import onnx

    from shardflow.tasks import onnx_graph

    reserved = {"prediction", "probability", "probabilities", "label"} & set(preprocessor.feature_names)
    if reserved:
        raise ExportError(
            f"feature column(s) {', '.join(sorted(reserved))} share a name with the model's outputs; "
            "rename them in the input (or list them under another name in the config)"
        )
    empty = [col for col in preprocessor.categorical if "" in preprocessor.vocabularies[col]]
    if empty:
        raise ExportError(
            f"categorical column(s) {', '.join(empty)} hold the empty string as a category, which the "
            "exported model reads as missing; replace it in the input (e.g. with 'none') and train again"
        )
    g, inputs = onnx_graph.Graph(), None
    if plan is not None:
        try:
            inputs = graph_inputs(g, preprocessor, plan.spec, plan.dimensions, plan.source.schema)
        except JoinsOutside as why:
            logger.warning("export: the joins stay outside the graph (send the joined columns): %s", why)
            g = onnx_graph.Graph()
    features = onnx_graph.preprocessing(g, preprocessor, inputs.sources if inputs else None)
    try:
        scores = family.export(g, features, payload, kind)
    except ValueError as err:
        raise ExportError(f"export of {family.name}: {err}") from None
    onnx_graph.outputs(g, scores, preprocessor, kind)
    model = g.model(doc=f"shardflow {family.label}")
    onnx.checker.check_model(model, full_check=True)
    return model, inputs


def describe(
    onnx_model, preprocessor: Preprocessor, *, config, family, run_dir: Path, metrics: dict, inputs=None
) -> dict:
    """``metadata.json``: what a server needs to call the model, and where it came from."""
    import onnx

    kinds = {
        onnx.TensorProto.DOUBLE: "double",
        onnx.TensorProto.STRING: "string",
        onnx.TensorProto.INT64: "int64",
        onnx.TensorProto.BOOL: "bool",
        onnx.TensorProto.FLOAT: "float",
    }
    datetime_parts = {
        f"{col}_{part}": [col, part] for col in config.features.datetime for part in config.features.datetime_parts
    }
    built, inputs = inputs, []
    for value in onnx_model.graph.input:
        entry = {"name": value.name, "type": kinds[value.type.tensor_type.elem_type]}
        if value.name in config.features.derived:
            entry["derived"] = config.features.derived[value.name]
        if value.name in datetime_parts:
            entry["datetime"] = datetime_parts[value.name]
        if built is not None and value.name in built.keys:
            entry["key"] = built.keys[value.name]
        if built is not None and value.name in built.columns:
            entry["column"] = built.columns[value.name]
        inputs.append(entry)
    manifest = read_manifest(run_dir)
    return {
        "format": "onnx",
        "opsets": {o.domain or "ai.onnx": o.version for o in onnx_model.opset_import},
        "model": family.name,
        "label": family.label,
        "task": preprocessor.task,
        "inputs": inputs,
        "outputs": [{"name": v.name, "type": kinds[v.type.tensor_type.elem_type]} for v in onnx_model.graph.output],
        "classes": preprocessor.classes,
        "label_type": preprocessor.label_type,
        "target": preprocessor.target,
        "target_transform": preprocessor.target_transform,
        "derived": dict(config.features.derived),
        "missing": "numbers: NaN; categories: the empty string",
        # Where the model came from, by name and hash: no path of the machine that exported it.
        "joins": [
            {
                "table": Path(str(j.path)).name,
                "on": j.on,
                "right_on": j.right_on or j.on,
                "columns": j.columns,
                # Inside: the table's rows are in the graph, which takes the fact rows' keys.
                "in_graph": built is not None,
                **({"rows": built.rows[i]} if built is not None else {}),
            }
            for i, j in enumerate(config.joins)
        ],
        "source_run": {
            "run_id": manifest.run_id or run_dir.name,
            "model_files": {
                k: v
                for k, v in manifest.artifacts.items()
                if stage_of(k) == RunDir.TRAIN and k.split("/", 1)[1].split("/")[0].split(".")[0] == family.name
            },
        },
        "metrics": metrics,
    }


def validation_rows(plan, limit: int) -> pd.DataFrame | None:
    """Up to ``limit`` validation rows of the run's input, read in this process: the prepared
    features, and the input's own columns they lack (join keys, what expressions read)."""
    from shardflow.tasks.prepare import prepare_partition
    from shardflow.tasks.scoring import with_input_columns

    if plan is None:
        return None
    try:
        raw = plan.read("pandas")
        dims = plan.dimension_frames("pandas")
    except (ShardflowError, OSError):
        return None
    kept, total = [], 0
    for part in raw.to_delayed():
        part = part.compute(scheduler="sync").reset_index(drop=True)
        features = prepare_partition(part, plan.spec, dims).features
        valid = with_input_columns(features[features[SPLIT_COLUMN]], part)
        kept.append(valid)
        total += len(valid)
        if total >= limit:
            break
    return pd.concat(kept, ignore_index=True).head(limit) if kept else None


def compare(exported: ExportedModel, rows: pd.DataFrame, preprocessor: Preprocessor, family, payload) -> dict:
    """The exported model's predictions against shardflow's on the same prepared rows."""
    from shardflow.tasks.scoring import prediction_columns

    x = preprocessor.transform(rows)[preprocessor.feature_names].to_numpy(np.float32)
    ours = pd.DataFrame(prediction_columns(family.predict(payload, x, None, {}), preprocessor))
    theirs = exported.predict(rows)
    numeric = [c for c in ours.columns if ours[c].dtype.kind == "f"]
    difference = max(float(np.max(np.abs(ours[c].to_numpy() - theirs[c].to_numpy()), initial=0.0)) for c in numeric)
    scale = max(float(np.max(np.abs(ours[c].to_numpy()), initial=0.0)) for c in numeric)
    labels = [c for c in ours.columns if c not in numeric]
    agree = float(np.mean([(ours[c].to_numpy() == theirs[c].to_numpy()).mean() for c in labels])) if labels else 1.0
    # Regression values may be in the thousands: the tolerance is relative to their size.
    return {
        "rows": len(rows),
        "max_abs_difference": difference / max(1.0, scale) if not preprocessor.classes else difference,
        "labels_agree": agree,
    }


def check_quantization(report: dict, tolerance: float, *, rows: int) -> None:
    """Refuse an int8 model whose validation metric is worse than fp32's by more than
    ``tolerance`` (a fraction of fp32's value); record the relative loss in ``report``.

    How much int8 costs depends on the trained weights (the range of each layer's
    activations), not only on the quantizer: the same recipe costs 0.02% on one MLP and 4%
    on another, so it is measured on every export, never assumed.

    Examples
    --------
    >>> report = {"fp32": {"rmse": 260.0}, "int8": {"rmse": 270.4}}
    >>> check_quantization(report, 0.05, rows=500); round(report["relative_loss"], 3)
    0.04
    >>> try:
    ...     check_quantization(report, 0.01, rows=500)
    ... except ExportError as refused:
    ...     print(refused)
    --quantize int8: the int8 model's validation rmse is 4.00% worse than fp32's (270.4 against 260 on 500 rows), over
    --int8-tolerance 0.01; export without --quantize, or pass --int8-tolerance 0.05 to accept it
    """
    metric = next(k for k in report["fp32"] if k not in ("bytes", "rows_per_second"))
    fp32, int8 = report["fp32"][metric], report["int8"][metric]
    worse = (int8 - fp32) if metric_direction(metric) == "min" else (fp32 - int8)
    relative = worse / max(abs(fp32), 1e-12)
    report["relative_loss"], report["tolerance"] = relative, tolerance
    if not relative <= tolerance:  # NaN is refused too
        accept = math.ceil(relative * 100 + 0.5) / 100 if math.isfinite(relative) else None
        raise ExportError(
            f"--quantize int8: the int8 model's validation {metric} is {100 * relative:.2f}% worse than "
            f"fp32's ({int8:.4g} against {fp32:.4g} on {rows} rows), over --int8-tolerance {tolerance}; "
            "export without --quantize"
            + (f", or pass --int8-tolerance {accept} to accept it" if accept is not None and accept < 1 else "")
        )


def quantize_int8(model: bytes) -> bytes:
    """Dynamic int8 quantization of the weights of the model's matrix products."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model)
        previous = logging.root.manager.disable
        logging.disable(max(previous, logging.WARNING))  # the quantizer's advice goes to the root logger
        try:
            quantize_dynamic(
                str(source),
                str(target),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                reduce_range=True,
            )
        finally:
            logging.disable(previous)
        return target.read_bytes()


def quantization_report(fp32: bytes, int8: bytes, *, metadata: dict, rows: pd.DataFrame, preprocessor, kind) -> dict:
    """The int8 model's validation metric, size and single-process latency next to fp32's."""
    report = {}
    for name, data in (("fp32", fp32), ("int8", int8)):
        model = ExportedModel(data, metadata)
        out = model.run(rows)
        scores = out.get("probabilities", out.get("probability", out.get("prediction")))
        y = (
            preprocessor.transform(rows)[preprocessor.target].to_numpy(np.float64)
            if kind.is_classification
            else rows[preprocessor.target].to_numpy(np.float64)
        )
        scoring = Scoring(kind.name, classes=len(preprocessor.classes))
        metric = primary_metric(kind.name)
        value = finish_metrics(partial_metrics(y, scores, scoring), scoring).get(metric)
        best = min(_timed(model, rows) for _ in range(3))
        report[name] = {metric: value, "bytes": len(data), "rows_per_second": len(rows) / best}
    report["change"] = {k: report["int8"][k] - report["fp32"][k] for k in report["fp32"] if k != "rows_per_second"}
    report["speedup"] = report["int8"]["rows_per_second"] / report["fp32"]["rows_per_second"]
    logger.info(
        "export: int8 %s; size %s → %s; %.2f× the rows/s of fp32",
        ", ".join(
            f"{k} {report['fp32'][k]:.5f} → {report['int8'][k]:.5f}"
            for k in report["fp32"]
            if k not in ("bytes", "rows_per_second")
        ),
        format_bytes(len(fp32)),
        format_bytes(len(int8)),
        report["speedup"],
    )
    return report


def _timed(model: ExportedModel, rows: pd.DataFrame) -> float:
    inputs = model.inputs(rows)
    started = time.perf_counter()
    model.session.run(None, inputs)
    return time.perf_counter() - started
