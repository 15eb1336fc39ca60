"""No regression at millions of rows: this tree against an earlier commit, same data, one run.

Issue 30 made small jobs fast; this checks that large ones did not pay for it. The generated
trips dataset (``shardflow generate``, cached in ``benchmarks/.data``) at each size, with its
own job config (``train.models`` narrowed, by default to the global XGBoost, whose allreduce
spans the cluster), is run by this tree and by ``--baseline`` (a directory where the earlier
commit is installed), alternating, each a fresh ``shardflow run --force`` process on the same
local cluster of two worker processes. Writes ``benchmarks/results/scale.{json,md}``.

    git archive 5211751 | tar -x -C /tmp/base-src
    pip install --no-deps --no-build-isolation --target /tmp/base-site /tmp/base-src
    python -m benchmarks.scale --baseline /tmp/base-site --label 5211751 --rows 4000000 8000000
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

import yaml

from benchmarks.planner import profile_of, timed, write_results

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data"
RESULTS = ROOT / "results"
CLUSTER = {"spec": "local", "processes": True, "n_workers": 2, "threads_per_worker": 1}


def dataset(rows: int) -> Path:
    """The generated trips dataset of ``rows`` rows (written once, by this tree)."""
    out = DATA / f"trips-{rows}"
    if not (out / "trips.yaml").exists():
        command = ["generate", "--rows", str(rows), "--out", str(out), "--overwrite", "-q"]
        subprocess.run([sys.executable, "-m", "shardflow", *command], check=True)
    return out


def job(data: Path, runs: Path, models: list, cluster: dict) -> Path:
    """The dataset's own config, its paths absolute, ``train.models`` and the cluster set."""
    spec = yaml.safe_load((data / "trips.yaml").read_text())
    # YAML 1.1 reads the key `on` as True: written back, it must be `on` again.
    spec["joins"] = [{("on" if k is True else k): v for k, v in j.items()} for j in spec.get("joins", [])]
    spec["input"]["path"] = str(data / spec["input"]["path"])
    for j in spec["joins"]:
        j["path"] = str(data / j["path"])
    spec.setdefault("output", {})["runs_dir"] = str(runs)
    spec.setdefault("train", {})["models"] = models
    spec["cluster"] = {**cluster, "dashboard_address": "127.0.0.1:0"}
    path = runs.parent / f"job-{data.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def one_run(config: Path, runs: Path, baseline: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if baseline is not None:
        env["PYTHONPATH"] = str(baseline)
    before = set(runs.iterdir())
    seconds, _ = timed([sys.executable, "-m", "shardflow", "run", "-c", str(config), "--force", "-q"], env=env)
    (run_dir,) = set(runs.iterdir()) - before
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    peaks = run_dir / "train" / "peak_memory.json"
    return {
        "seconds": seconds,
        "stage_seconds": profile_of(run_dir),
        "metrics": metrics["metrics"],
        "worker_peak_bytes": max(json.loads(peaks.read_text()).values(), default=None) if peaks.exists() else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="where the earlier commit is installed")
    parser.add_argument("--label", default="baseline", help="the earlier commit's name in the report")
    parser.add_argument("--rows", type=int, nargs="+", default=[4_000_000, 8_000_000])
    parser.add_argument("--models", nargs="+", default=["xgboost"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    sides = {f"{args.label} (before)": args.baseline.resolve(), f"{head.strip() or 'this tree'} (after)": None}
    sizes = {}
    for rows in args.rows:
        data = dataset(rows)
        with tempfile.TemporaryDirectory() as tmp:
            runs = Path(tmp) / "runs"
            runs.mkdir()
            config = job(data, runs, args.models, CLUSTER)
            out = {name: [] for name in sides}
            for rep in range(args.repeats):
                for name in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
                    out[name].append(one_run(config, runs, sides[name]))
                    print(f"  {rows:,} rows, {name}: {out[name][-1]['seconds']:.1f}s", flush=True)
            sizes[rows] = out
    results = {
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "models": args.models,
        "cluster": CLUSTER,
        "sides": list(sides),
        "sizes": sizes,
        "seconds": time.perf_counter() - started,
    }
    write_results(args.out, "scale", results, report(results))
    return 0


def report(r: dict) -> str:
    before, after = r["sides"]
    lines = [
        "# Large inputs: no regression (issue 30)",
        "",
        f"{r['machine']}; {r['date']}; `python -m benchmarks.scale` took {r['seconds'] / 60:.1f} min.",
        f"The generated trips dataset and its own config, `train.models: {r['models']}`, on a local cluster of "
        f"{r['cluster']['n_workers']} worker processes of {r['cluster']['threads_per_worker']} thread; each run a "
        f"fresh `shardflow run --force` process, {before} and {after} alternating on the same files.",
        "",
        "| rows | side | median s | etl s | train s | evaluate s | worker peak | validation metrics |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    ratios = []
    for rows, out in r["sizes"].items():
        for side in (before, after):
            runs = out[side]
            stage = {
                s: statistics.median(x["stage_seconds"].get(s) or 0 for x in runs) for s in ("etl", "train", "evaluate")
            }
            seconds = statistics.median(x["seconds"] for x in runs)
            peak = runs[0]["worker_peak_bytes"]
            metrics = "; ".join(
                f"{m}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k in ("auc", "logloss", "r2", "rmse"))
                for m, values in runs[0]["metrics"].items()
            )
            lines.append(
                f"| {int(rows):,} | {side} | {seconds:.1f} | {stage['etl']:.1f} | "
                f"{stage['train']:.1f} | {stage['evaluate']:.1f} | "
                f"{f'{peak / 2**30:.2f} GiB' if peak else '—'} | {metrics} |"
            )
        medians = [statistics.median(x["seconds"] for x in out[side]) for side in (before, after)]
        ratios.append((rows, medians[1] / medians[0]))
    lines += ["", "Ratio (after / before, whole run): " + ", ".join(f"{int(n):,} rows {q:.2f}" for n, q in ratios), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
