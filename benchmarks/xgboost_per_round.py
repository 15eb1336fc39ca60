"""Global XGBoost: shardflow's training versus hand-written ``xgboost.dask``, side by side.

Both sides train on the same ETL output, on the same LocalCluster, with the same
parameters and rounds, in alternating repetitions; each timing covers building the
DaskQuantileDMatrix objects and training (what a user waits for). shardflow's side also
checkpoints every 25 rounds and tracks early-stopping state.

    python benchmarks/xgboost_per_round.py --etl RUN/etl --rounds 100 --repeats 3

Writes ``benchmarks/results/xgboost_per_round.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import dask.dataframe as dd

from shardflow.cluster.factory import start
from shardflow.pipelines.setup.train_config import XGBoostConfig
from shardflow.pipelines.training import load_training_data, train_global_xgboost, xgboost_params

RESULTS = Path(__file__).parent / "results"


def hand_written(client, etl_dir: Path, params: dict, rounds: int) -> float:
    """What a user would write: read the feature table, split, DaskQuantileDMatrix, train."""
    import xgboost as xgb
    import xgboost.dask

    started = time.perf_counter()
    prep = json.loads((etl_dir / "preprocessor.json").read_text())
    features = prep["numeric"] + prep["categorical"]
    df = dd.read_parquet(str(etl_dir / "features"))
    # Persist before projecting: dask-expr may otherwise combine Parquet partitions differently
    # for the feature columns and the label, which xgboost.dask rejects.
    train, valid = client.persist([df[~df._is_validation], df[df._is_validation]])
    types = ["q"] * len(prep["numeric"]) + ["c"] * len(prep["categorical"])
    dtrain = xgb.dask.DaskQuantileDMatrix(
        client, train[features], train[prep["target"]], feature_types=types, enable_categorical=True
    )
    dvalid = xgb.dask.DaskQuantileDMatrix(
        client, valid[features], valid[prep["target"]], feature_types=types, enable_categorical=True, ref=dtrain
    )
    xgb.dask.train(client, params, dtrain, num_boost_round=rounds, evals=[(dvalid, "validation")], verbose_eval=False)
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etl", type=Path, required=True, help="an ETL stage output directory (RUN/etl)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-workers", type=int, default=2)
    args = parser.parse_args(argv)
    runtime = start(spec="local", n_workers=args.n_workers, dashboard_address="127.0.0.1:0")
    try:
        data = load_training_data(runtime, args.etl)
        cfg = XGBoostConfig(num_boost_round=args.rounds, early_stopping_rounds=None)
        params = xgboost_params(data.task, cfg, runtime.backend, seed=0)
        times = {"shardflow": [], "xgboost.dask": []}
        for rep in range(args.repeats):
            order = ["shardflow", "xgboost.dask"] if rep % 2 == 0 else ["xgboost.dask", "shardflow"]
            for side in order:
                if side == "shardflow":
                    with tempfile.TemporaryDirectory() as checkpoints:
                        seconds = train_global_xgboost(runtime, data, cfg, checkpoint_dir=checkpoints)["seconds"]
                else:
                    seconds = hand_written(runtime.client, args.etl, params, args.rounds)
                times[side].append(seconds)
                print(f"rep {rep} {side}: {seconds:.2f}s ({seconds / args.rounds * 1000:.1f} ms/round)")
        layout = runtime.layout()
    finally:
        runtime.close()
    per_round = {k: [t / args.rounds for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in per_round.items()}
    ratio = med["shardflow"] / med["xgboost.dask"]
    result = {
        "rows": sum(data.train_rows),
        "rounds": args.rounds,
        "repeats": args.repeats,
        "params": params,
        "cluster": layout,
        "seconds_per_round": per_round,
        "median_seconds_per_round": med,
        "ratio": ratio,
        "goal": "ratio <= 1.10",
        "met": ratio <= 1.10,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "xgboost_per_round.json").write_text(json.dumps(result, indent=1))
    spread = {k: (min(v), max(v)) for k, v in per_round.items()}
    table = "\n".join(
        [
            "| side | median ms/round | min–max ms/round |",
            "|---|---:|---:|",
            *(f"| {k} | {med[k] * 1000:.1f} | {spread[k][0] * 1000:.1f}–{spread[k][1] * 1000:.1f} |" for k in med),
            "",
            f"ratio shardflow / xgboost.dask: **{ratio:.3f}** (goal ≤ 1.10: {'met' if ratio <= 1.10 else 'missed'}); "
            f"{result['rows']:,} training rows, {args.rounds} rounds, {args.repeats} alternating repeats, "
            f"{layout['workers']} workers × {layout['threads']} threads",
        ]
    )
    (RESULTS / "xgboost_per_round.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
