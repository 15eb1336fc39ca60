"""Scoring throughput, single process, on the same rows: ONNX Runtime (fp32, int8) against
shardflow's own scoring (PyTorch eager for the MLP, XGBoost's ``inplace_predict``).

Trains the global XGBoost and the data-parallel MLP on the default dataset, exports both,
and scores the same prepared validation rows each way, in alternating repetitions:

- *whole path*: from prepared rows (numbers, category strings) to predictions — shardflow's
  ``Preprocessor.transform`` + the model, against the exported graph that holds both;
- *model only*: the MLP network alone, as ``torch`` eager and as ONNX (fp32 and int8), on the
  encoded feature matrix (what int8 quantization speeds up).

    python benchmarks/export_throughput.py --rows 200000 --repeats 5

Writes ``benchmarks/results/export_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def best_of(repeats: int, call) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the generated dataset")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="threads of every scorer (default 1)")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from shardflow.cluster.factory import start
    from shardflow.pipelines.job import run
    from shardflow.pipelines.records import trained_models
    from shardflow.pipelines.serving.export import export, quantize_int8, validation_rows
    from shardflow.pipelines.setup.config import default_config_path, load_config
    from shardflow.pipelines.setup.generate import generate
    from shardflow.tasks.exported import load_exported
    from shardflow.tasks.models import predict_booster, predict_mlp
    from shardflow.tasks.neural import MLPSpec, network

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runtime = start(spec="local", n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0")
        try:
            generate(tmp / "data", args.rows, seed=3, runtime=runtime)
            config = load_config(
                default_config_path(),
                [f"output.runs_dir={tmp / 'runs'}", "train.models=[xgboost,mlp]", "train.xgboost.num_boost_round=100"],
                base_dir=tmp / "data",
            )
            result = run(config, runtime=runtime)
        finally:
            runtime.close()
        run_dir = result.run_dir
        exports = {
            name: export(run_dir, tmp / f"export-{name}", model=name, quantize="int8" if name == "mlp" else None)
            for name in ("xgboost", "mlp")
        }
        pre = exports["mlp"].metadata
        from shardflow.tasks.encode import Preprocessor

        preprocessor = Preprocessor.from_json((run_dir / "etl" / "preprocessor.json").read_text())
        rows = validation_rows(config, preprocessor, 50_000)
        n = len(rows)
        results = {"rows": n, "threads": args.threads, "dataset_rows": args.rows, "whole_path": {}, "model_only": {}}

        def shardflow_path(family):
            payload = trained_models.load_model(run_dir, family)
            predictor = predict_mlp if family == "mlp" else predict_booster

            def call():
                x = preprocessor.transform(rows)[preprocessor.feature_names].to_numpy(np.float32)
                predictor(payload, x, args.threads, {})

            return call

        def onnx_path(path, precision):
            model = load_exported(path, precision=precision, threads=args.threads)
            inputs = model.inputs(rows)
            return lambda: model.session.run(None, inputs)

        scorers = {
            "xgboost: XGBoost inplace_predict": shardflow_path("xgboost"),
            "xgboost: ONNX Runtime fp32": onnx_path(exports["xgboost"].path, "fp32"),
            "mlp: PyTorch eager": shardflow_path("mlp"),
            "mlp: ONNX Runtime fp32": onnx_path(exports["mlp"].path, "fp32"),
            "mlp: ONNX Runtime int8": onnx_path(exports["mlp"].path, "int8"),
        }
        for name, call in scorers.items():
            call()  # warm up
            best, median = best_of(args.repeats, call)
            results["whole_path"][name] = {"rows_per_second": n / best, "median_seconds": median}

        # The network alone, on the encoded matrix.
        payload = trained_models.load_model(run_dir, "mlp")
        spec = MLPSpec.from_dict(payload["spec"])
        net = network(spec, payload["params"]).eval()
        x = preprocessor.transform(rows)[preprocessor.feature_names].to_numpy(np.float32)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.from_numpy(x[:2]),),
                buffer,
                input_names=["x"],
                output_names=["out"],
                dynamic_axes={"x": {0: "N"}, "out": {0: "N"}},
                opset_version=21,
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions = {
            "ONNX Runtime fp32": ort.InferenceSession(buffer.getvalue(), options),
            "ONNX Runtime int8": ort.InferenceSession(quantize_int8(buffer.getvalue()), options),
        }

        def torch_call():
            with torch.no_grad():
                net(torch.from_numpy(x))

        model_only = {
            "PyTorch eager": torch_call,
            **{k: (lambda s=s: s.run(None, {"x": x})) for k, s in sessions.items()},
        }
        for name, call in model_only.items():
            call()
            best, median = best_of(args.repeats, call)
            results["model_only"][name] = {"rows_per_second": n / best, "median_seconds": median}
        results["quantization"] = pre.get("quantization", {})

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_throughput.json").write_text(json.dumps(results, indent=1, default=float))
    lines = [
        f"# Scoring throughput, single process, {args.threads} thread(s), {n:,} validation rows",
        "",
        "Whole path (prepared rows → predictions):",
        "",
        "| scorer | rows/s | ratio to shardflow's own |",
        "|---|---:|---:|",
    ]
    for name, value in results["whole_path"].items():
        family = name.split(":")[0]
        base = results["whole_path"][
            f"{family}: XGBoost inplace_predict" if family == "xgboost" else f"{family}: PyTorch eager"
        ]["rows_per_second"]
        lines.append(f"| {name} | {value['rows_per_second']:,.0f} | {value['rows_per_second'] / base:.2f} |")
    lines += [
        "",
        "MLP network only (encoded matrix → output):",
        "",
        "| scorer | rows/s | ratio to ONNX fp32 |",
        "|---|---:|---:|",
    ]
    base = results["model_only"]["ONNX Runtime fp32"]["rows_per_second"]
    for name, value in results["model_only"].items():
        lines.append(f"| {name} | {value['rows_per_second']:,.0f} | {value['rows_per_second'] / base:.2f} |")
    q = results["quantization"]
    if q:
        metric = [k for k in q["fp32"] if k not in ("bytes", "rows_per_second")][0]
        lines += [
            "",
            f"int8 MLP (whole path): {metric} {q['fp32'][metric]:.5f} → {q['int8'][metric]:.5f}, "
            f"size {q['fp32']['bytes']:,} → {q['int8']['bytes']:,} bytes.",
        ]
    text = "\n".join(lines) + "\n"
    (RESULTS / "export_throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
