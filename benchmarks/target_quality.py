"""Model quality on a regression target in the thousands: every family's validation R².

A house-price table (numerics, a categorical, a skewed price in the thousands) in four
shuffled CSV files, trained with every family by whichever shardflow is importable — run it
once with the current code and once with an older checkout on ``PYTHONPATH`` to compare:

    python benchmarks/target_quality.py --label after
    PYTHONPATH=/tmp/oldpkg python benchmarks/target_quality.py --label before
    python benchmarks/target_quality.py --table       # the Markdown table of every label run

Writes ``benchmarks/results/target_quality.json`` (one entry per label) and
``target_quality.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

RESULTS = Path(__file__).parent / "results"
FAMILY_ORDER = ("xgboost", "xgboost_partitions", "stacked", "mlp", "mlp_partitions")


def house_prices(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    area = rng.gamma(6.0, 18.0, n).clip(20, 600)
    rooms = np.clip(np.round(area / 30 + rng.normal(0, 0.8, n)), 1, 12)
    age = rng.uniform(0, 90, n)
    district = rng.choice(["centre", "inner", "outer", "suburb", "rural"], n, p=[0.1, 0.25, 0.3, 0.25, 0.1])
    factor = pd.Series(district).map({"centre": 2.2, "inner": 1.6, "outer": 1.1, "suburb": 0.9, "rural": 0.6})
    price = 18 * area * factor.to_numpy() * (1 - 0.003 * age) + 90 * rooms
    price = price * np.exp(rng.normal(0, 0.12, n))  # 500 … 30000, mean ≈ 2400
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "area": area.round(1),
            "rooms": rooms.astype(int),
            "age": age.round(0),
            "district": district,
            "price": price.round(2),
        }
    )


def run_once(label: str, rows: int, extra_target: dict) -> dict:
    import shardflow
    from shardflow.pipelines.job import run
    from shardflow.pipelines.setup.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = house_prices(rows)
        (tmp / "in").mkdir()
        for i, idx in enumerate(np.array_split(np.random.default_rng(1).permutation(rows), 4)):
            table.iloc[np.sort(idx)].to_csv(tmp / "in" / f"part{i}.csv", index=False)
        job = {
            "input": {"path": "in/*.csv"},
            "target": {"column": "price", "task": "regression", **extra_target},
            "features": {"numeric": ["area", "rooms", "age"], "categorical": ["district"]},
            "split": {"key": ["id"]},
            "output": {"runs_dir": "runs"},
            "cluster": {"spec": "local", "n_workers": 2, "threads_per_worker": 1},
        }
        (tmp / "job.yaml").write_text(yaml.safe_dump(job))
        result = run(load_config(tmp / "job.yaml"))
        return {
            "label": label,
            "rows": rows,
            "target": job["target"],
            "version": shardflow.__version__,
            "r2": {name: result.metrics[name]["r2"] for name in FAMILY_ORDER if name in result.metrics},
            "rmse": {name: result.metrics[name]["rmse"] for name in FAMILY_ORDER if name in result.metrics},
            "price_mean": float(table.price.mean()),
        }


def table(entries: dict) -> str:
    labels = list(entries)
    lines = ["| model | " + " | ".join(f"R² {label}" for label in labels) + " |", "|---|" + "---:|" * len(labels)]
    for name in FAMILY_ORDER:
        values = [entries[label]["r2"].get(name, float("nan")) for label in labels]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    ratio = [entries[label]["r2"].get("mlp", float("nan")) / entries[label]["r2"]["xgboost"] for label in labels]
    lines.append("| MLP R² ÷ global XGBoost R² | " + " | ".join(f"{v:.3f}" for v in ratio) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", help="name of this run's column (before, after, ...)")
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--transform", default=None, help="target.transform (new code only)")
    parser.add_argument("--table", action="store_true", help="only write the Markdown table")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "target_quality.json"
    entries = json.loads(path.read_text()) if path.exists() else {}
    if not args.table:
        extra = {"transform": args.transform} if args.transform else {}
        entries[args.label] = run_once(args.label, args.rows, extra)
        path.write_text(json.dumps(entries, indent=1))
    text = (
        "# Regression target in the thousands: validation R² per family\n\n"
        f"House prices (mean {next(iter(entries.values()))['price_mean']:.0f}), "
        f"{next(iter(entries.values()))['rows']:,} rows in 4 shuffled CSV files, every family with "
        "shardflow's defaults, LocalCluster 2×1.\n\n" + table(entries) + "\n"
    )
    (RESULTS / "target_quality.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
