"""Families one after another against families that share the cluster (issue 30, item 7).

The all-families job of :mod:`benchmarks.planner` (its 400,000-row CSV with two joins, every
family including the linear baseline) on two worker processes of one thread, with
``train.overlap: false`` and ``auto``, alternating, each a fresh ``shardflow run`` process.
Writes ``benchmarks/results/overlap.{json,md}``.

    python -m benchmarks.overlap [--rows 400000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.planner import alternate, job, make_tables, shardflow_run, write_results

RESULTS = Path(__file__).parent / "results"
MODELS = ["linear", "xgboost", "xgboost_partitions", "stacked", "mlp", "mlp_partitions"]
CLUSTER = {"spec": "local", "processes": True, "n_workers": 2, "threads_per_worker": 1}


def config_with(base: Path, overlap: str) -> Path:
    spec = yaml.safe_load(base.read_text())
    spec["cluster"] = {**CLUSTER, "dashboard_address": "127.0.0.1:0"}
    spec["train"]["overlap"] = overlap
    path = base.with_name(f"{base.stem}-overlap-{overlap}.yaml")
    path.write_text(yaml.safe_dump(spec))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tables(args.rows, tmp / "data")
        (tmp / "runs").mkdir()
        base = job(tmp / "data", tmp / "runs", MODELS)
        configs = {"one after another (overlap: false)": config_with(base, "false")}
        configs["families share the cluster (overlap: auto)"] = config_with(base, "auto")
        sides = alternate({name: (lambda c=c: shardflow_run(c)) for name, c in configs.items()}, args.repeats)
    results = {
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rows": args.rows,
        "cluster": CLUSTER,
        "models": MODELS,
        "sides": sides,
        "seconds": time.perf_counter() - started,
    }
    write_results(args.out, "overlap", results, report(results))
    return 0


def report(r: dict) -> str:
    names = list(r["sides"])
    medians = {n: statistics.median(x["seconds"] for x in r["sides"][n]) for n in names}
    train = {n: statistics.median(x["stage_seconds"]["train"] for x in r["sides"][n]) for n in names}
    lines = [
        "# Families one after another, or sharing the cluster (issue 30, item 7)",
        "",
        f"{r['machine']}; {r['date']}; `python -m benchmarks.overlap` took {r['seconds'] / 60:.1f} min.",
        f"The all-families job of `benchmarks.planner` ({r['rows']:,} rows, two joins; {', '.join(r['models'])}) "
        f"on {r['cluster']['n_workers']} worker processes of {r['cluster']['threads_per_worker']} thread, "
        "each run a fresh `shardflow run --force` process; medians of alternating repeats.",
        "",
        "| job | median s | runs s | train stage s (median) | R² (validation) |",
        "|---|---:|---|---:|---|",
    ]
    for n in names:
        runs = ", ".join(f"{x['seconds']:.2f}" for x in r["sides"][n])
        r2 = ", ".join(f"{m} {v:.4f}" for m, v in r["sides"][n][0]["r2"].items())
        lines.append(f"| {n} | {medians[n]:.2f} | {runs} | {train[n]:.2f} | {r2} |")
    first, second = names
    lines += [
        "",
        f"Ratio (sharing / one after another): whole run {medians[second] / medians[first]:.2f}, "
        f"train stage {train[second] / train[first]:.2f}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
