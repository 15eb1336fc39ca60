"""The input planner on the data users bring (issue 12), side by side with what they would
write without shardflow, in one run.

    python -m benchmarks.planner                 # 400,000 rows, 2 repeats (about 10 minutes on 2 cores)
    python -m benchmarks.planner --rows 50000 --repeats 1   # checks the script itself

The data: one CSV of sales (skewed: store and product popularity follow Zipf laws, revenue
is heavy-tailed) and two dimension tables as CSV (stores, products); the target is the
revenue derived from quantity, price, discount, region and season. Not the default
generator's shape: one file, string keys, a date column, two joins.

Sections (every wall time is a fresh process, as a user runs it: imports and cluster
start included):

- ``xgboost only``: ``shardflow run`` with the global XGBoost only against the pandas +
  ``xgboost.train`` (all cores) script a user would write (:func:`pandas_script`), same
  XGBoost parameters, rounds and early stopping. Goal: ≤ 1.3×.
- ``all families``: ``shardflow run`` with every default family, reported.
- ``100k rows``: the same jobs on 100,000 rows. Goal: end to end < 5 s, fixed overhead < 1 s.
- ``sorted by target``: the CSV sorted by revenue; the per-partition XGBoost ensemble's R²
  against the global model's, with the shuffle and without it (``input.exchangeable: true``).

Results: ``benchmarks/results/planner.json`` and ``planner.md``; each run's stage timings
(from its manifest) are kept as the profile of where the time goes.
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
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

PARAMS = {
    "tree_method": "hist",
    "max_depth": 8,
    "eta": 0.1,
    "max_bin": 256,
    "objective": "reg:squarederror",
    "eval_metric": "rmse",
    "seed": 0,
}
ROUNDS, EARLY_STOPPING = 300, 20


def make_tables(rows: int, out: Path, seed: int = 0, sort_by_target: bool = False) -> None:
    """``sales.csv``, ``stores.csv`` and ``products.csv`` in ``out``."""
    rng = np.random.default_rng(seed)
    n_stores, n_products = 400, 3000
    regions = np.array(["north", "south", "east", "west", "central", "coast"])
    stores = pd.DataFrame(
        {
            "store_id": [f"S{i:04d}" for i in range(n_stores)],
            "region": rng.choice(regions, n_stores, p=[0.3, 0.25, 0.15, 0.12, 0.1, 0.08]),
            "store_size": rng.lognormal(6, 0.5, n_stores).round(0),
        }
    )
    categories = np.array([f"cat{i:02d}" for i in range(25)])
    zipf_categories = 1 / np.arange(1, 26) ** 1.1
    products = pd.DataFrame(
        {
            "sku": [f"P{i:05d}" for i in range(n_products)],
            "category": rng.choice(categories, n_products, p=zipf_categories / zipf_categories.sum()),
            "base_price": rng.lognormal(3, 0.8, n_products).round(2),
        }
    )
    store_p = 1 / np.arange(1, n_stores + 1) ** 0.8
    product_p = 1 / np.arange(1, n_products + 1) ** 1.05
    store = rng.choice(n_stores, rows, p=store_p / store_p.sum())
    sku = rng.choice(n_products, rows, p=product_p / product_p.sum())
    day = rng.integers(0, 365, rows)
    quantity = 1 + rng.poisson(0.5 + stores.store_size.to_numpy()[store] / 800)
    discount = rng.choice([0.0, 0.05, 0.1, 0.2, 0.3], rows, p=[0.55, 0.15, 0.15, 0.1, 0.05])
    channel = rng.choice(["store", "web", "app"], rows, p=[0.6, 0.3, 0.1])
    region_factor = (
        pd.Series(stores.region.to_numpy()[store])
        .map({"north": 1.0, "south": 0.9, "east": 1.15, "west": 1.05, "central": 0.85, "coast": 1.3})
        .to_numpy()
    )
    season = 1 + 0.25 * np.sin(2 * np.pi * (day - 300) / 365)
    web = np.where(channel == "web", 0.92, 1.0)
    revenue = (
        quantity
        * products.base_price.to_numpy()[sku]
        * (1 - discount)
        * region_factor
        * season
        * web
        * rng.lognormal(0, 0.15, rows)
    )
    sales = pd.DataFrame(
        {
            "order_id": np.arange(rows),
            "date": (pd.Timestamp("2025-01-01") + pd.to_timedelta(day, "D")).strftime("%Y-%m-%d"),
            "store_id": stores.store_id.to_numpy()[store],
            "sku": products.sku.to_numpy()[sku],
            "quantity": quantity,
            "discount": discount,
            "channel": channel,
            "revenue": revenue.round(2),
        }
    )
    if sort_by_target:
        sales = sales.sort_values("revenue", kind="stable")
    out.mkdir(parents=True, exist_ok=True)
    sales.to_csv(out / "sales.csv", index=False)
    stores.to_csv(out / "stores.csv", index=False)
    products.to_csv(out / "products.csv", index=False)


def job(data: Path, runs: Path, models: list, **input_options) -> Path:
    """The shardflow job for the tables in ``data``."""
    spec = {
        "input": {"path": str(data / "sales.csv"), **input_options},
        "joins": [
            {"path": str(data / "stores.csv"), "on": ["store_id"], "columns": ["region", "store_size"]},
            {"path": str(data / "products.csv"), "on": ["sku"], "columns": ["category", "base_price"]},
        ],
        "target": {"column": "revenue", "task": "regression"},
        "features": {
            "numeric": ["quantity", "discount", "store_size", "base_price"],
            "categorical": ["channel", "region", "category", "store_id"],
            "datetime": ["date"],
            "datetime_parts": ["month", "dayofweek", "dayofyear"],
            "derived": {"list_price": "quantity * base_price"},
        },
        "split": {"key": ["order_id"]},
        "output": {"runs_dir": str(runs)},
        "train": {
            "models": models,
            "xgboost": {
                "num_boost_round": ROUNDS,
                "early_stopping_rounds": EARLY_STOPPING,
                "params": {"max_depth": 8, "eta": 0.1},
            },
        },
    }
    path = runs.parent / f"job-{'-'.join(models)}-{len(input_options)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def pandas_script(data: Path) -> str:
    """What a user writes without shardflow: pandas joins and features, ``xgboost.train``
    on every core with the same parameters, rounds and early stopping."""
    return textwrap.dedent(f"""
        import os, time, json
        import numpy as np, pandas as pd, xgboost as xgb
        started = time.perf_counter()
        sales = pd.read_csv({str(data / "sales.csv")!r})
        stores = pd.read_csv({str(data / "stores.csv")!r})
        products = pd.read_csv({str(data / "products.csv")!r})
        df = sales.merge(stores, on="store_id", how="left").merge(products, on="sku", how="left")
        date = pd.to_datetime(df.date)
        df["month"], df["dayofweek"], df["dayofyear"] = date.dt.month, date.dt.day_of_week, date.dt.day_of_year
        df["list_price"] = df.quantity * df.base_price
        features = ["quantity", "discount", "store_size", "base_price", "month", "dayofweek", "dayofyear",
                    "list_price", "channel", "region", "category", "store_id"]
        for col in ["channel", "region", "category", "store_id"]:
            df[col] = df[col].astype("category")
        valid = (pd.util.hash_pandas_object(df.order_id, index=False).to_numpy() % 5) == 0
        X, y = df[features], df.revenue.to_numpy()
        dtrain = xgb.QuantileDMatrix(X[~valid], y[~valid], enable_categorical=True)
        dvalid = xgb.DMatrix(X[valid], y[valid], enable_categorical=True)
        params = {{**{PARAMS!r}, "nthread": os.cpu_count()}}
        booster = xgb.train(params, dtrain, num_boost_round={ROUNDS}, evals=[(dvalid, "validation")],
                            early_stopping_rounds={EARLY_STOPPING}, verbose_eval=False)
        p = booster.predict(dvalid, iteration_range=(0, booster.best_iteration + 1))
        yv = y[valid]
        r2 = 1 - ((yv - p) ** 2).sum() / ((yv - yv.mean()) ** 2).sum()
        print(json.dumps({{"r2": float(r2), "rounds": booster.num_boosted_rounds(),
                          "seconds_inside": time.perf_counter() - started}}))
    """)


def timed(command: list, env=None) -> tuple:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def shardflow_run(config: Path) -> dict:
    seconds, out = timed([sys.executable, "-m", "shardflow", "run", "-c", str(config), "--force", "-q"])
    run_dir = None
    for line in out.splitlines():
        if line.startswith("run:"):
            run_dir = Path(line.split(None, 1)[1].strip())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    stages = profile_of(run_dir)
    summary = json.loads((run_dir / "etl" / "summary.json").read_text())
    return {
        "seconds": seconds,
        "r2": {m: v.get("r2") for m, v in metrics["metrics"].items()},
        "stage_seconds": stages,
        "etl_timings": summary.get("timings"),
        "partitions": summary["partitions"],
        "train_seconds": metrics.get("train_seconds"),
        "plan_training": manifest.get("plan", {}).get("training"),
    }


def profile_of(run_dir: Path) -> dict:
    """Where the time of a run went: seconds of each stage (training: its wall time, or the
    sum of its families' in runs that did not record it); what is in none (interpreter,
    imports, cluster start and close, report) is the rest."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out = {}
    for stage, info in manifest.get("stages", {}).items():
        seconds = info.get("wall_seconds", info.get("seconds"))
        out[stage] = sum(seconds.values()) if isinstance(seconds, dict) else seconds
    return out


def pandas_run(data: Path) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(pandas_script(data))
    try:
        seconds, out = timed([sys.executable, handle.name])
    finally:
        os.unlink(handle.name)
    return {"seconds": seconds, **json.loads(out.strip().splitlines()[-1])}


def alternate(sides: dict, repeats: int) -> dict:
    out = {name: [] for name in sides}
    for rep in range(repeats):
        for name in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
            out[name].append(sides[name]())
            print(f"  {name}: {out[name][-1]['seconds']:.2f}s", flush=True)
    return out


def median(results: list, key: str = "seconds") -> float:
    return statistics.median(r[key] for r in results)


def fixed_overhead(tiny_config: Path) -> dict:
    """What a run costs beyond its stages: ``shardflow run`` on a 1,000-row table (one model)
    minus its stage times; and ``shardflow --help`` and ``import shardflow`` alone."""
    help_s, _ = timed([sys.executable, "-m", "shardflow", "--help"])
    import_s, _ = timed([sys.executable, "-c", "import shardflow"])
    bare_s, _ = timed([sys.executable, "-c", "pass"])
    tiny = shardflow_run(tiny_config)
    stages = sum(v for v in tiny["stage_seconds"].values() if v)
    return {
        "help_s": help_s,
        "import_s": import_s - bare_s,
        "interpreter_s": bare_s,
        "tiny_run_s": tiny["seconds"],
        "tiny_stage_s": stages,
        "fixed_overhead_s": tiny["seconds"] - stages,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = {
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rows": args.rows,
        "small_rows": args.small_rows,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, rows in (("big", args.rows), ("small", args.small_rows), ("tiny", 1_000)):
            make_tables(rows, tmp / name)
        make_tables(args.rows, tmp / "sorted", sort_by_target=True)
        csv_bytes = (tmp / "big" / "sales.csv").stat().st_size
        results["csv_bytes"] = csv_bytes
        print(f"data: {args.rows:,} rows, {csv_bytes / 2**20:.1f} MiB CSV", flush=True)

        print("xgboost only", flush=True)
        (tmp / "runs").mkdir()
        only = job(tmp / "big", tmp / "runs", ["xgboost"])
        sides = alternate(
            {
                "shardflow run (global XGBoost)": lambda: shardflow_run(only),
                "pandas + xgboost.train": lambda: pandas_run(tmp / "big"),
            },
            args.repeats,
        )
        results["xgboost_only"] = {
            "sides": sides,
            "ratio": median(sides["shardflow run (global XGBoost)"]) / median(sides["pandas + xgboost.train"]),
        }

        print("all families", flush=True)
        every = job(tmp / "big", tmp / "runs", ["xgboost", "xgboost_partitions", "stacked", "mlp", "mlp_partitions"])
        results["all_families"] = {
            "sides": alternate({"shardflow run (all families)": lambda: shardflow_run(every)}, 1)
        }

        print(f"{args.small_rows:,} rows", flush=True)
        (tmp / "runs-small").mkdir()
        small_only = job(tmp / "small", tmp / "runs-small", ["xgboost"])
        small_every = job(
            tmp / "small", tmp / "runs-small", ["xgboost", "xgboost_partitions", "stacked", "mlp", "mlp_partitions"]
        )
        results["small"] = {
            "sides": alternate(
                {
                    "shardflow run (global XGBoost)": lambda: shardflow_run(small_only),
                    "shardflow run (all families)": lambda: shardflow_run(small_every),
                    "pandas + xgboost.train": lambda: pandas_run(tmp / "small"),
                },
                args.repeats,
            ),
            **fixed_overhead(job(tmp / "tiny", tmp / "runs-small", ["xgboost"], blocksize="64MB")),
        }

        print("sorted by target", flush=True)
        (tmp / "runs-sorted").mkdir()
        sorted_results = {}
        for label, exchangeable in (("shuffled (default)", False), ("as read (input.exchangeable: true)", True)):
            config = job(
                tmp / "sorted", tmp / "runs-sorted", ["xgboost", "xgboost_partitions"], exchangeable=exchangeable
            )
            sorted_results[label] = shardflow_run(config)
            print(f"  {label}: {sorted_results[label]['r2']}", flush=True)
        results["sorted_by_target"] = sorted_results
    results["seconds"] = time.perf_counter() - started
    write_results(args.out, "planner", results, report(results))
    return 0


def write_results(out: Path, name: str, results: dict, text: str) -> None:
    """``<name>.json`` (the figures) and ``<name>.md`` (``text``) in ``out``; ``text`` printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1, default=float))
    (out / f"{name}.md").write_text(text)
    print(text)


def report(r: dict) -> str:
    only = r["xgboost_only"]
    ours, theirs = only["sides"]["shardflow run (global XGBoost)"], only["sides"]["pandas + xgboost.train"]
    small = r["small"]
    small_only = median(small["sides"]["shardflow run (global XGBoost)"])
    small_every = median(small["sides"]["shardflow run (all families)"])
    every = r["all_families"]["sides"]["shardflow run (all families)"][0]
    sorted_r = r["sorted_by_target"]
    shuffled, as_read = sorted_r["shuffled (default)"]["r2"], sorted_r["as read (input.exchangeable: true)"]["r2"]
    gap_shuffled = abs(shuffled["xgboost"] - shuffled["xgboost_partitions"])
    gap_as_read = abs(as_read["xgboost"] - as_read["xgboost_partitions"])

    def met(ok):
        return "met" if ok else "**missed**"

    lines = [
        "# A user's CSV, from 1,000 to 400,000 rows (issues 12 and 30)",
        "",
        f"{r['machine']}; {r['date']}; `python -m benchmarks.planner` took {r['seconds'] / 60:.1f} min.",
        f"Data: one CSV of {r['rows']:,} sales rows ({r['csv_bytes'] / 2**20:.1f} MiB) with two CSV dimension tables "
        "(stores, products), Zipf-skewed keys, a heavy-tailed derived revenue target (regression). Every time is a "
        "fresh process, imports and cluster start included; medians of the alternating repeats.",
        "",
        "## Goals",
        "",
        "| goal | figure | met |",
        "|---|---|---|",
        f"| global XGBoost only ≤ 1.3× pandas + xgboost.train | {median(ours):.2f} s vs {median(theirs):.2f} s = "
        f"{only['ratio']:.2f}× | {met(only['ratio'] <= 1.3)} |",
        f"| {r['small_rows']:,} rows end to end: < 5 s global XGBoost only, < 12 s all five families | "
        f"{small_only:.2f} s; {small_every:.2f} s | {met(small_only < 5)}, {met(small_every < 12)} |",
        f"| all five families ≤ 3× pandas + xgboost.train (reported) | {every['seconds']:.2f} s = "
        f"{every['seconds'] / median(theirs):.2f}× | {met(every['seconds'] / median(theirs) <= 3)} |",
        f"| fixed overhead (1,000-row run minus its stages) < 1.5 s | {small['fixed_overhead_s']:.2f} s "
        f"({small['tiny_run_s']:.2f} s run, {small['tiny_stage_s']:.2f} s stages) | "
        f"{met(small['fixed_overhead_s'] < 1.5)} |",
        f"| `shardflow --help` < 0.3 s; `import shardflow` < 0.1 s (beyond the interpreter's "
        f"{small['interpreter_s']:.2f} s) | {small['help_s']:.2f} s; {small['import_s']:.3f} s | "
        f"{met(small['help_s'] < 0.3)}, {met(small['import_s'] < 0.1)} |",
        f"| sorted by target: per-partition ensemble within 0.01 R² of the global model after the shuffle | "
        f"R² {shuffled['xgboost_partitions']:.4f} vs {shuffled['xgboost']:.4f} (gap {gap_shuffled:.4f}); as read: "
        f"{as_read['xgboost_partitions']:.4f} vs {as_read['xgboost']:.4f} (gap {gap_as_read:.4f}) | "
        f"{met(gap_shuffled <= 0.01)} |",
        "",
        "## Side by side",
        "",
        "| job | median s | runs s | R² (validation) | partitions |",
        "|---|---:|---|---|---:|",
    ]
    for section, results in (("", only["sides"]), ("", r["all_families"]["sides"]), ("small: ", small["sides"])):
        for name, runs in results.items():
            r2 = runs[0].get("r2")
            r2 = ", ".join(f"{k} {v:.4f}" for k, v in r2.items()) if isinstance(r2, dict) else f"{r2:.4f}"
            each = ", ".join(format(x["seconds"], ".2f") for x in runs)
            lines.append(f"| {section}{name} | {median(runs):.2f} | {each} | {r2} | {runs[0].get('partitions', '')} |")
    lines += [
        "",
        "## Where the time goes (stage seconds from each run's manifest; the rest is interpreter, "
        "imports, cluster start/close and the report)",
        "",
        "| job | total s | etl | train | evaluate | train per family | etl passes |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for label, run in (
        ("global XGBoost only", ours[0]),
        ("all families", every),
        (f"{r['small_rows']:,} rows, global XGBoost only", small["sides"]["shardflow run (global XGBoost)"][0]),
        (f"{r['small_rows']:,} rows, all families", small["sides"]["shardflow run (all families)"][0]),
    ):
        st = run["stage_seconds"]
        lines.append(
            f"| {label} | {run['seconds']:.2f} | {st.get('etl', 0):.2f} | {st.get('train', 0):.2f} | "
            f"{st.get('evaluate', 0):.2f} | {', '.join(f'{k} {v:.2f}' for k, v in run['train_seconds'].items())} | "
            f"{', '.join(f'{k} {v:.2f}' for k, v in (run['etl_timings'] or {}).items())} |"
        )
    lines += ["", f"Plan's training line (global XGBoost only run): {ours[0].get('plan_training')}", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
