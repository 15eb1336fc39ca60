"""shardflow's benchmark suite: every comparison side by side with its baseline, in one run.

    python -m benchmarks.run                      # the full suite (about 15 minutes on 2 cores)
    python -m benchmarks.run --quick              # small sizes, to check the suite itself
    python -m benchmarks.run --cluster local-cuda # the same on GPU workers (results beside the CPU ones)

Each comparison runs both sides on the same data and cluster, alternating repetitions,
and reports the median and spread of each side and their ratio. Results go to
``benchmarks/results/<cluster>/``: ``results.json``, ``results.md`` and PNG plots.
Generated datasets are cached in ``benchmarks/.data`` (not in git).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data"
RESULTS = ROOT / "results"


# ----------------------------------------------------------------------------- helpers


def peak_rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def summary(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def alternate(sides: dict, repeats: int) -> dict:
    """Run each side ``repeats`` times, alternating the order; returns per-side result lists."""
    names = list(sides)
    out = {n: [] for n in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            result = sides[name]()
            out[name].append(result)
            print(f"  {name} #{rep}: {json.dumps(_short(result))}", flush=True)
    return out


def _short(result):
    return {
        k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if not isinstance(v, (dict, list))
    }


def dataset(rows: int, rows_per_partition: int, runtime) -> Path:
    from shardflow.pipelines.setup.generate import generate, is_generated

    path = DATA / f"trips-{rows}-{rows_per_partition}"
    if not is_generated(path, rows, 0):
        started = time.perf_counter()
        generate(path, rows, rows_per_partition=rows_per_partition, runtime=runtime, overwrite=True)
        print(f"generated {rows:,} rows in {time.perf_counter() - started:.1f}s", flush=True)
    return path


def config_for(data_dir: Path, runs: Path, *overrides):
    from shardflow.pipelines.setup.config import load_config

    return load_config(data_dir / "trips.yaml", [f"output.runs_dir={runs}", *overrides])


def task_count(client, fn):
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        value = fn()
    return value, len(stream.data)


# ----------------------------------------------------------------------------- sections


def bench_overhead(spec: str, runs: Path, small: Path, cli_data: Path) -> dict:
    from shardflow.cluster.factory import start
    from shardflow.pipelines.setup.plan import InputPlan

    starts = []
    for _ in range(3):
        t = time.perf_counter()
        rt = start(spec=spec, n_workers=2, dashboard_address="127.0.0.1:0")
        starts.append(time.perf_counter() - t)
        rt.close()
    config = config_for(small, runs)
    builds = []
    for _ in range(3):
        t = time.perf_counter()
        InputPlan(config).read("pandas").to_delayed()
        builds.append(time.perf_counter() - t)
    e2e = []
    for _ in range(2):
        t = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "shardflow",
                "run",
                "--rows",
                "100000",
                "--work-dir",
                str(cli_data),
                "--cluster",
                spec,
                "-q",
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise RuntimeError(proc.stderr)
        e2e.append(time.perf_counter() - t)
    fixed = statistics.median(starts) + statistics.median(builds)
    return {
        "cluster_start_s": summary(starts),
        "graph_build_s": summary(builds),
        "fixed_overhead_s": fixed,
        "small_end_to_end_s": summary(e2e),
        "goals": {"fixed overhead < 3 s": fixed < 3.0, "100k rows end to end < 10 s": statistics.median(e2e) < 10.0},
    }


def bench_etl_vs_pandas(runtime, data: Path, runs: Path, repeats: int, rows: int) -> dict:
    from benchmarks.baselines import pandas_xgboost
    from shardflow.cluster.memory import reset_peak_memory
    from shardflow.pipelines.etl.stage import etl

    def ours():
        reset_peak_memory(runtime.client)
        (result, tasks) = task_count(runtime.client, lambda: etl(config_for(data, runs), runtime=runtime))
        total = result.rows + sum(result.quarantined.values())
        return {
            "seconds": result.seconds,
            "rows_per_s": total / result.seconds,
            "tasks": tasks,
            "peak_worker_memory": max(result.peak_memory.values()),
        }

    def pandas():
        peak_rss_reset()
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            pandas_xgboost.etl(data, out=Path(out) / "features.parquet")
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "rows_per_s": rows / seconds, "peak_memory": peak_rss()}

    out = alternate({"shardflow (2 workers)": ours, "pandas (1 process)": pandas}, repeats)
    ratio = statistics.median(r["rows_per_s"] for r in out["shardflow (2 workers)"]) / statistics.median(
        r["rows_per_s"] for r in out["pandas (1 process)"]
    )
    return {
        "rows": rows,
        "sides": out,
        "throughput_ratio": ratio,
        "goals": {"ETL ≥ 1.8× pandas throughput": ratio >= 1.8},
    }


def bench_scaling(runtime_factory, sizes: dict, runs: Path, worker_rows: int) -> dict:
    from shardflow.pipelines.etl.stage import etl

    points = []
    with runtime_factory(2) as rt:
        for rows, data in sizes.items():
            result = etl(config_for(data, runs), runtime=rt)
            points.append(
                {"rows": rows, "seconds": result.seconds, "peak_worker_memory": max(result.peak_memory.values())}
            )
            print(f"  scaling {rows:,}: {result.seconds:.1f}s", flush=True)
    big = [p for p in points if p["rows"] >= 4_000_000] or points
    exponent = (
        float(np.polyfit(np.log([p["rows"] for p in big]), np.log([p["seconds"] for p in big]), 1)[0])
        if len(big) > 1
        else float("nan")
    )
    workers = {}
    for n in (1, 2):
        with runtime_factory(n) as rt:
            result = etl(config_for(sizes[worker_rows], runs), runtime=rt)
            workers[n] = result.seconds
            print(f"  {n} worker(s), {worker_rows:,} rows: {result.seconds:.1f}s", flush=True)
    return {
        "points": points,
        "exponent_4M_32M": exponent,
        "workers": workers,
        "speedup_2_vs_1": workers[1] / workers[2],
        "goals": {"time vs rows exponent ≤ 1.1": exponent <= 1.1},
    }


def bench_xgboost(runtime, data: Path, runs: Path, repeats: int, rounds: int) -> dict:
    import tempfile as tf

    from benchmarks.baselines import dask_xgboost, pandas_xgboost
    from shardflow.pipelines.etl.stage import etl
    from shardflow.pipelines.setup.train_config import XGBoostConfig
    from shardflow.pipelines.training import load_training_data, train_global_xgboost, xgboost_params

    etl_result = etl(config_for(data, runs), runtime=runtime)
    td = load_training_data(runtime, etl_result.stage_dir)
    cfg = XGBoostConfig(num_boost_round=rounds, early_stopping_rounds=None)
    params = xgboost_params(td.task, cfg, runtime.backend, 0)
    x_tr, y_tr, x_va, y_va, n_numeric = pandas_xgboost.etl(data)
    threads = sum(runtime.layout()["threads"])

    def ours():
        with tf.TemporaryDirectory() as ck:
            r = train_global_xgboost(runtime, td, cfg, checkpoint_dir=ck)
        return {"seconds": r["seconds"], "per_round": r["seconds"] / rounds}

    def dask_hand():
        t = time.perf_counter()
        parts = dask_xgboost.etl_from_features(runtime.client, etl_result.stage_dir)
        dask_xgboost.train(runtime.client, *parts, params, rounds)
        s = time.perf_counter() - t
        return {"seconds": s, "per_round": s / rounds}

    def single():
        t = time.perf_counter()
        p = {k: v for k, v in params.items() if k != "device"}
        pandas_xgboost.train(x_tr, y_tr, x_va, y_va, p, rounds, threads, n_numeric)
        s = time.perf_counter() - t
        return {"seconds": s, "per_round": s / rounds}

    out = alternate(
        {
            "shardflow xgboost": ours,
            "hand-written xgboost.dask": dask_hand,
            f"xgboost.train ({threads} threads)": single,
        },
        repeats,
    )
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in out.items()}
    r_dask = med["shardflow xgboost"] / med["hand-written xgboost.dask"]
    r_single = med["shardflow xgboost"] / med[f"xgboost.train ({threads} threads)"]
    return {
        "rows": sum(td.train_rows),
        "rounds": rounds,
        "sides": out,
        "ratio_vs_dask": r_dask,
        "ratio_vs_single": r_single,
        "goals": {
            "XGBoost ≤ 1.10× xgboost.dask": r_dask <= 1.10,
            "XGBoost ≤ 1.15× single-process xgboost.train": r_single <= 1.15,
        },
    }


def bench_end_to_end(runtime, data: Path, runs: Path, repeats: int, rounds: int) -> dict:
    from benchmarks.baselines import dask_xgboost
    from shardflow.pipelines.job import run

    overrides = [
        "train.models=[xgboost]",
        f"train.xgboost.num_boost_round={rounds}",
        "train.xgboost.early_stopping_rounds=null",
    ]

    def ours():
        t = time.perf_counter()
        run(config_for(data, runs, *overrides), runtime=runtime, force=True)
        return {"seconds": time.perf_counter() - t}

    def hand():
        t = time.perf_counter()
        client = runtime.client
        parts = dask_xgboost.etl(client, data)
        model = dask_xgboost.train(
            client,
            *parts,
            {
                "objective": "binary:logistic",
                "tree_method": "hist",
                "max_depth": 8,
                "eta": 0.1,
                "max_bin": 256,
                "eval_metric": ["auc", "logloss"],
            },
            rounds,
        )
        dask_xgboost.evaluate(client, model, parts[2], parts[3])
        return {"seconds": time.perf_counter() - t}

    out = alternate({"shardflow run": ours, "hand-written dask + xgboost.dask": hand}, repeats)
    ratio = statistics.median(r["seconds"] for r in out["shardflow run"]) / statistics.median(
        r["seconds"] for r in out["hand-written dask + xgboost.dask"]
    )
    return {"sides": out, "ratio": ratio, "goals": {"end to end ≤ 1.10× hand-written dask": ratio <= 1.10}}


def bench_mlp(runtime, data: Path, runs: Path, repeats: int, epochs: int) -> dict:
    from benchmarks.baselines import torch_mlp
    from shardflow.pipelines.etl.stage import etl
    from shardflow.pipelines.setup.train_config import MLPConfig
    from shardflow.pipelines.training import load_training_data, mlp_spec_for, train_data_parallel_mlp
    from shardflow.tasks.shards import read_shard

    etl_result = etl(config_for(data, runs), runtime=runtime)
    td = load_training_data(runtime, etl_result.stage_dir)
    cfg = MLPConfig(epochs=epochs, batch_size=1024, sync_every=32, early_stopping_patience=None)
    spec = mlp_spec_for(td.preprocessor, cfg)
    whole = read_shard(str(etl_result.stage_dir / "features.zarr"), 0, sum(td.train_rows) + sum(td.valid_rows), 0)
    threads = sum(runtime.layout()["threads"])
    workers = len(set(td.workers))

    def ours():
        r = train_data_parallel_mlp(runtime, td, cfg)
        return {
            "seconds": r["seconds"],
            "samples_per_second": r["samples"] / r["seconds"],
            "validation_loss": r["history"]["validation_loss"][-1],
        }

    def single():
        return torch_mlp.train(
            whole.x_train, whole.y_train, whole.x_valid, whole.y_valid, spec, epochs, 1024 * workers, cfg.lr, threads
        )

    out = alternate(
        {f"data-parallel MLP ({workers} workers)": ours, f"torch, 1 process ({threads} threads)": single}, repeats
    )
    a, b = out.values()
    ratio = statistics.median(r["samples_per_second"] for r in a) / statistics.median(
        r["samples_per_second"] for r in b
    )
    loss_gap = (
        statistics.median(r["validation_loss"] for r in a) / statistics.median(r["validation_loss"] for r in b) - 1
    )
    return {
        "sides": out,
        "samples_ratio": ratio,
        "validation_loss_gap": loss_gap,
        "goals": {"MLP ≥ 1.5× samples/s at equal loss (±2%)": ratio >= 1.5 and abs(loss_gap) <= 0.02},
    }


def bench_out_of_core(spec: str, data: Path, runs: Path, memory_limit: str) -> dict:
    import pyarrow.parquet as pq
    from dask.utils import parse_bytes

    from shardflow.cluster.factory import connect
    from shardflow.pipelines.etl.stage import etl

    files = sorted((data / "trips").glob("*.parquet"))
    per_row = pq.read_table(files[0]).to_pandas().memory_usage(deep=True).sum() / pq.read_metadata(files[0]).num_rows
    in_memory = per_row * sum(pq.read_metadata(f).num_rows for f in files)
    with connect(spec=spec, n_workers=2, memory_limit=memory_limit, dashboard_address="127.0.0.1:0") as rt:
        limit = parse_bytes(memory_limit)
        result = etl(config_for(data, runs), runtime=rt)
    peak = max(result.peak_memory.values())
    return {
        "data_in_memory_bytes": int(in_memory),
        "cluster_memory_limit": 2 * limit,
        "data_to_memory": in_memory / (2 * limit),
        "seconds": result.seconds,
        "rows": result.rows,
        "peak_worker_memory": peak,
        "worker_memory_limit": limit,
        "goals": {"out-of-core (≥3× memory) peak under limit": in_memory >= 3 * 2 * limit and peak < limit},
    }


# ----------------------------------------------------------------------------- report


def write_results(out_dir: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    lines = [
        f"# shardflow benchmarks — {results['machine']['cluster']}",
        "",
        f"{results['machine']['cpus']} CPUs, {results['machine']['memory_gb']:.0f} GB, "
        f"{results['machine']['platform']}; {results['finished']}; suite took "
        f"{results['seconds'] / 60:.1f} min",
        "",
        "## Goals",
        "",
        "| goal | figure | met |",
        "|---|---|---|",
    ]
    for section, data in results["sections"].items():
        for goal, met in data.get("goals", {}).items():
            lines.append(f"| {goal} | {_figure(section, data)} | {'met' if met else '**missed**'} |")
    for section, data in results["sections"].items():
        lines += ["", f"## {section}", ""]
        if "sides" in data:
            lines += ["| side | median s | min–max s | other |", "|---|---:|---:|---|"]
            for side, runs in data["sides"].items():
                s = [r["seconds"] for r in runs]
                extra = ", ".join(
                    f"{k} {_fmt(statistics.median(r[k] for r in runs))}" for k in runs[0] if k != "seconds"
                )
                lines.append(f"| {side} | {statistics.median(s):.2f} | {min(s):.2f}–{max(s):.2f} | {extra} |")
        scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
        if scalars:
            lines += [""] + [f"- {k}: {_fmt(v)}" for k, v in scalars.items()]
        if "points" in data:
            lines += ["", "| rows | ETL s | rows/s | peak worker memory |", "|---:|---:|---:|---:|"]
            lines += [
                f"| {p['rows']:,} | {p['seconds']:.1f} | {p['rows'] / p['seconds']:,.0f} | "
                f"{p['peak_worker_memory'] / 2**20:,.0f} MiB |"
                for p in data["points"]
            ]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    if (out_dir / "ANALYSIS.md").exists():
        lines += ["", "Missed goals are analysed, with the evidence, in [ANALYSIS.md](ANALYSIS.md)."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    scaling = results["sections"].get("scaling")
    if scaling:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        rows = [p["rows"] for p in scaling["points"]]
        ax.loglog(rows, [p["seconds"] for p in scaling["points"]], "o-", label="shardflow ETL, 2 workers")
        ax.loglog(rows, [scaling["points"][0]["seconds"] * r / rows[0] for r in rows], "k:", label="linear")
        ax.set_xlabel("rows")
        ax.set_ylabel("seconds")
        ax.set_title(f"ETL time vs rows (exponent {scaling['exponent_4M_32M']:.2f})")
        ax.legend()
        fig.savefig(out_dir / "scaling.png", dpi=90, bbox_inches="tight")
    ratios = {name: data for name, data in results["sections"].items() if "sides" in data}
    if ratios:
        fig, axes = plt.subplots(1, len(ratios), figsize=(4 * len(ratios), 3.5))
        for ax, (name, data) in zip(np.atleast_1d(axes), ratios.items()):
            sides = list(data["sides"])
            med = [statistics.median(r["seconds"] for r in data["sides"][s]) for s in sides]
            ax.bar(range(len(sides)), med, color=["#4878a8", "#d08040", "#6a9f58"][: len(sides)])
            ax.set_xticks(range(len(sides)), [s.replace(" ", "\n", 2) for s in sides], fontsize=7)
            ax.set_title(name, fontsize=9)
            ax.set_ylabel("seconds (median)")
        fig.tight_layout()
        fig.savefig(out_dir / "comparisons.png", dpi=90, bbox_inches="tight")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _figure(section, data) -> str:
    keys = {
        "overhead": ("fixed_overhead_s", "small_end_to_end_s"),
        "etl vs pandas": ("throughput_ratio",),
        "scaling": ("exponent_4M_32M", "speedup_2_vs_1"),
        "xgboost": ("ratio_vs_dask", "ratio_vs_single"),
        "end to end": ("ratio",),
        "mlp": ("samples_ratio", "validation_loss_gap"),
        "out of core": ("data_to_memory", "peak_worker_memory", "worker_memory_limit"),
    }.get(section, ())
    parts = []
    for k in keys:
        v = data.get(k)
        if isinstance(v, dict):
            v = v.get("median")
        parts.append(f"{k} {_fmt(v)}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="shardflow benchmarks, side by side with baselines")
    parser.add_argument("--cluster", default="local", choices=["local", "local-cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the suite, not the goals")
    parser.add_argument("--only", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    import contextlib
    import logging

    import psutil

    from shardflow.cluster.factory import connect, start

    logging.getLogger("shardflow").setLevel(logging.WARNING)
    started = time.perf_counter()
    quick = args.quick
    sizes = [200_000, 400_000, 800_000, 1_600_000] if quick else [1_000_000, 4_000_000, 16_000_000, 32_000_000]
    runs = Path(tempfile.mkdtemp(prefix="shardflow-bench-runs-"))
    sections = {}
    wanted = set(args.only or ["overhead", "etl vs pandas", "scaling", "xgboost", "end to end", "mlp", "out of core"])

    @contextlib.contextmanager
    def runtime_factory(n):
        with connect(spec=args.cluster, n_workers=n, threads_per_worker=1, dashboard_address="127.0.0.1:0") as rt:
            yield rt

    runtime = start(spec=args.cluster, n_workers=2, dashboard_address="127.0.0.1:0")
    try:
        data = {rows: dataset(rows, max(50_000, rows // 16), runtime) for rows in sizes}
        small = dataset(100_000, 25_000, runtime)
        mid = data[sizes[1]]
        if "overhead" in wanted:
            print("overhead", flush=True)
            sections["overhead"] = bench_overhead(args.cluster, runs, small, DATA / "cli")
        if "etl vs pandas" in wanted:
            print("etl vs pandas", flush=True)
            sections["etl vs pandas"] = bench_etl_vs_pandas(runtime, data[sizes[2]], runs, args.repeats, sizes[2])
        if "xgboost" in wanted:
            print("xgboost", flush=True)
            sections["xgboost"] = bench_xgboost(runtime, mid, runs, args.repeats, 20 if quick else 50)
        if "end to end" in wanted:
            print("end to end", flush=True)
            sections["end to end"] = bench_end_to_end(runtime, mid, runs, args.repeats, 20 if quick else 50)
        if "mlp" in wanted:
            print("mlp", flush=True)
            sections["mlp"] = bench_mlp(runtime, data[sizes[0]], runs, args.repeats, 2)
    finally:
        runtime.close()
    if "scaling" in wanted:
        print("scaling", flush=True)
        sections["scaling"] = bench_scaling(runtime_factory, data, runs, sizes[2])
    if "out of core" in wanted:
        print("out of core", flush=True)
        rows = 8_000_000 if quick else 60_000_000
        limit = "600MB" if quick else "1GB"
        with connect(spec=args.cluster, n_workers=2, dashboard_address="127.0.0.1:0") as rt:
            ooc = dataset(rows, 250_000, rt)
        sections["out of core"] = bench_out_of_core(args.cluster, ooc, runs, limit)
    machine = {
        "cpus": os.cpu_count(),
        "memory_gb": psutil.virtual_memory().total / 2**30,
        "platform": platform.platform(),
        "cluster": args.cluster,
        "quick": quick,
    }
    results = {
        "machine": machine,
        "sections": sections,
        "seconds": time.perf_counter() - started,
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        "notes": [],
    }
    out_dir = RESULTS / (args.cluster + ("-quick" if quick else ""))
    previous = out_dir / "results.json"
    if args.only and previous.exists():  # a partial rerun updates its sections, keeps the others
        old = json.loads(previous.read_text())
        results["sections"] = {**old["sections"], **sections}
        results["seconds"] = old["seconds"]
        results["notes"] = old.get("notes", [])
    write_results(out_dir, results)
    print((out_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
