"""Tuning (``shardflow tune``): what 40 trials gain for the global XGBoost and for the MLP, and
how trials scale with workers.

Two tables generated here (not the default trips generator):

- regression: Friedman's #1 function of 5 uniform features plus 5 noise features, noise σ = 1
  (the same function as scikit-learn's ``make_friedman1``), 20,000 rows;
- classification: scikit-learn's ``make_classification`` (20 features, 6 informative, 5% of
  the labels flipped), 20,000 rows.

**Quality.** Each table is tuned with 40 trials (TPE, median pruner, shardflow's default space)
on a LocalCluster of 2 workers × 1 thread; the study's first trial is the untuned parameters,
so the table reports the defaults' validation metric (the metric early stopping watches:
RMSE, log loss) beside the best trial's, and the final model's evaluation (trained by the train
stage with the best parameters) beside the untuned run's. The ``mlp`` part does the same for
the MLP's study (a job training the data-parallel MLP only; its study's value is the MLP's
validation loss).

**Trial rate.** The same study (24 trials on 10,000 rows, 24 random startup trials and no
pruner, so both clusters train exactly the same 24 models) on 1 worker × 1 thread and on
2 workers × 1 thread: finished trials per minute, counted from the study's start (after the
ETL, the features' loading included) to its last trial.

    python benchmarks/tuning.py            # writes benchmarks/results/tuning.json and tuning.md
    python benchmarks/tuning.py rate       # only the trial rates (the other results are kept)
    python benchmarks/tuning.py mlp        # only the MLP's study on both tables (train.models: [mlp])

Run it alone on the machine (see the design notes: XGBoost's OpenMP threads spin).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

RESULTS = Path(__file__).parent / "results"


def friedman(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 10))
    y = 10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    frame = pd.DataFrame(x.round(5), columns=[f"x{i}" for i in range(10)])
    frame["y"] = (y + rng.normal(0, 1.0, n)).round(4)
    return frame


def classification(n: int, seed: int = 0) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n, n_features=20, n_informative=6, n_redundant=4, flip_y=0.05, class_sep=0.7, random_state=seed
    )
    frame = pd.DataFrame(x.round(5), columns=[f"f{i}" for i in range(20)])
    frame["label"] = y
    return frame


def write_job(
    directory: Path, frame: pd.DataFrame, target: str, task: str, tune: dict, rounds: int = 300, family: str = "xgboost"
) -> Path:
    (directory / "in").mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 4)):
        frame.iloc[part].to_parquet(directory / "in" / f"part-{i}.parquet")
    job = {
        "input": {"path": "in"},
        "target": {"column": target, "task": task},
        "features": {"numeric": [c for c in frame.columns if c != target]},
        "output": {"runs_dir": "runs"},
        "train": {
            "models": [family],
            "xgboost": {"num_boost_round": rounds, "early_stopping_rounds": 20},
            "tune": tune,
        },
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def cluster(workers: int):
    from shardflow.cluster.factory import start

    return start(spec="local", n_workers=workers, threads_per_worker=1, memory_limit="3GB", dashboard_address=":0")


def quality(name: str, frame: pd.DataFrame, target: str, task: str, metrics: tuple, family: str = "xgboost") -> dict:
    from shardflow.pipelines.job import run
    from shardflow.pipelines.setup.config import load_config
    from shardflow.pipelines.tuning.search import tune

    with tempfile.TemporaryDirectory() as tmp:
        path = write_job(Path(tmp), frame, target, task, {"trials": 40}, family=family)
        runtime = cluster(2)
        try:
            started = time.perf_counter()
            untuned = run(load_config(path), runtime)
            tuned = tune(load_config(path), runtime)  # the untuned run's features are reused
            seconds = time.perf_counter() - started
        finally:
            runtime.close()
        record = json.loads((tuned.run_dir / "tune" / "tune.json").read_text())["studies"][family]
    study = tuned.studies[family]
    return {
        "table": name,
        "family": family,
        "rows": len(frame),
        "metric": study.metric,
        "default": study.default_value,
        "best": study.best_value,
        "trials": study.trials,
        "pruned": study.pruned,
        "best_params": study.best_params,
        "importances": record["importances"],
        "study_seconds": record["seconds"],
        "seconds": round(seconds, 1),
        "evaluation": {
            "untuned": {m: untuned.metrics[family][m] for m in metrics},
            "tuned": {m: tuned.run.metrics[family][m] for m in metrics},
        },
    }


def trial_rate(workers: int) -> dict:
    from shardflow.pipelines.setup.config import load_config
    from shardflow.pipelines.tuning.search import tune

    study = {"trials": 24, "startup_trials": 24, "pruner": "none"}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_job(Path(tmp), friedman(10_000, seed=1), "y", "regression", study, rounds=200)
        runtime = cluster(workers)
        try:
            result = tune(load_config(path), runtime)
        finally:
            runtime.close()
        record = json.loads((result.run_dir / "tune" / "tune.json").read_text())["studies"]["xgboost"]
    return {
        "workers": workers,
        "trials": record["finished"],
        "mode": record["mode"],
        "study_seconds": record["seconds"],
        "trials_per_minute": round(60 * record["finished"] / record["seconds"], 2),
        "best": result.studies["xgboost"].best_value,
    }


def markdown(out: dict) -> str:
    lines = [
        "# Tuning the global XGBoost and the MLP: 40 trials against the defaults, and trials per minute by workers",
        "",
        f"Machine: {out['machine']}. Generated by `python benchmarks/tuning.py`.",
        "",
        "## Quality: 40 trials (TPE, median pruner, the default space), LocalCluster 2 workers × 1 thread",
        "",
        "The study's value is the validation metric early stopping watches; trial 0 is the untuned parameters.",
        "",
        "| family | table | rows | study metric | defaults | best of 40 | change | pruned | study s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for q in out.get("quality", []):
        change = 100 * (q["best"] - q["default"]) / abs(q["default"])
        lines.append(
            f"| {q.get('family', 'xgboost')} | {q['table']} | {q['rows']:,} | {q['metric']} | {q['default']:.4f} | "
            f"{q['best']:.4f} | {change:+.1f}% | {q['pruned']} | {q['study_seconds']:.0f} |"
        )
    lines += ["", "The final models (the train stage, evaluated on the validation split):", ""]
    lines += ["| family | table | metric | untuned run | tuned run |", "|---|---|---|---:|---:|"]
    for q in out.get("quality", []):
        for metric, value in q["evaluation"]["untuned"].items():
            tuned = q["evaluation"]["tuned"][metric]
            lines.append(f"| {q.get('family', 'xgboost')} | {q['table']} | {metric} | {value:.4f} | {tuned:.4f} |")
    lines += ["", "Best parameters and their importances (fANOVA):", ""]
    for q in out.get("quality", []):
        params = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in q["best_params"].items())
        importance = ", ".join(f"{k} {100 * v:.0f}%" for k, v in q["importances"].items())
        lines += [f"- {q.get('family', 'xgboost')}, {q['table']}: {params}", f"  - importances: {importance}"]
    rates = {r["workers"]: r for r in out.get("rate", [])}
    lines += [
        "",
        "## Trial rate: the same study of 24 trials (random proposals, no pruning: the same 24 models) on 10,000 rows",
        "",
        "| workers × threads | mode | trials | study s | trials per minute |",
        "|---|---|---:|---:|---:|",
    ]
    for r in out.get("rate", []):
        rate = f"{r['trials_per_minute']:.1f}"
        lines.append(f"| {r['workers']} × 1 | {r['mode']} | {r['trials']} | {r['study_seconds']:.1f} | {rate} |")
    if 1 in rates and 2 in rates:
        ratio = rates[2]["trials_per_minute"] / rates[1]["trials_per_minute"]
        lines += ["", f"2 workers / 1 worker: **{ratio:.2f}×** the trials per minute (goal ≥ 1.7×)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parts = sys.argv[1:] or ["xgboost", "mlp", "rate"]  # one part alone keeps the others' last results
    saved = RESULTS / "tuning.json"
    out = json.loads(saved.read_text()) if saved.exists() else {}
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    families = [f for f in ("xgboost", "mlp") if f in parts or (f == "xgboost" and "quality" in parts)]
    if families:
        tables = [
            ("regression (Friedman #1)", friedman(20_000), "y", "regression", ("rmse", "r2")),
            (
                "classification (make_classification)",
                classification(20_000),
                "label",
                "classification",
                ("logloss", "auc"),
            ),
        ]
        kept = [q for q in out.get("quality", []) if q.get("family", "xgboost") not in families]
        out["quality"] = kept + [quality(*table, family=family) for family in families for table in tables]
    if "rate" in parts:
        out["rate"] = [trial_rate(1), trial_rate(2)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tuning.json").write_text(json.dumps(out, indent=1, default=float))
    (RESULTS / "tuning.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
