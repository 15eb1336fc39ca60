"""Time lost to one killed worker, mid-ETL and mid-XGBoost training, versus fault-free runs.

    python -m benchmarks.faults --rows 10000000

A worker process is SIGKILLed (its nanny restarts it) while the ETL's write pass runs,
and while the global XGBoost model trains; each faulty run is compared with a
fault-free run of the same stage on the same data and cluster, and the outputs are
checked equal. Writes ``benchmarks/results/faults.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.run import RESULTS, config_for, dataset


def _kill_when(client, condition, timeout=600.0):
    pids = client.run(os.getpid)
    victim = pids[sorted(pids)[-1]]
    state = {"at": None}

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                os.kill(victim, signal.SIGKILL)
                state["at"] = time.monotonic()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, state


def main(argv=None) -> int:
    import zarr

    from shardflow.cluster.factory import connect
    from shardflow.pipelines.etl.stage import etl
    from shardflow.pipelines.setup.train_config import XGBoostConfig
    from shardflow.pipelines.training import load_training_data, train_global_xgboost
    from shardflow.tasks.models import xgboost_predict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args(argv)
    runs = Path(tempfile.mkdtemp(prefix="shardflow-faults-"))
    out = {"rows": args.rows}
    with connect(spec="local", n_workers=2, dashboard_address="127.0.0.1:0") as rt:
        data = dataset(args.rows, 500_000, rt)
        config = config_for(data, runs, "input.persist=false")

        clean = etl(config, runtime=rt)
        started = time.monotonic()

        def writing():
            return any(
                p.name.startswith(".") and len(list(p.glob("features/part-*.parquet"))) >= 4 for p in runs.iterdir()
            )

        killer, state = _kill_when(rt.client, writing)
        faulty = etl(config, runtime=rt)
        killer.join()
        x_clean = zarr.open_group(str(clean.stage_dir / "features.zarr"), mode="r")["X"][:]
        x_faulty = zarr.open_group(str(faulty.stage_dir / "features.zarr"), mode="r")["X"][:]
        out["etl"] = {
            "fault_free_s": clean.seconds,
            "killed_worker_s": faulty.seconds,
            "lost_s": faulty.seconds - clean.seconds,
            "killed_after_s": state["at"] - started,
            "outputs_equal": bool(np.array_equal(x_clean, x_faulty)),
        }
        print(json.dumps(out["etl"]), flush=True)

        rt.client.wait_for_workers(2, timeout=120)
        cfg = XGBoostConfig(num_boost_round=args.rounds, early_stopping_rounds=None)
        td = load_training_data(rt, clean.stage_dir)
        with tempfile.TemporaryDirectory() as ck:
            straight = train_global_xgboost(rt, td, cfg, checkpoint_dir=ck, checkpoint_seconds=0)
        with tempfile.TemporaryDirectory() as ck:

            def mid_training():
                state_file = Path(ck) / "state.json"
                return state_file.exists() and json.loads(state_file.read_text())["rounds"] >= args.rounds // 2

            killer, state = _kill_when(rt.client, mid_training)
            resumed = train_global_xgboost(rt, td, cfg, checkpoint_dir=ck, checkpoint_seconds=0)
            killer.join()
        x_valid = zarr.open_group(str(clean.stage_dir / "features.zarr"), mode="r")
        valid = x_valid["is_validation"][:]
        sample = np.flatnonzero(valid)[:200_000]
        xv = x_valid["X"].get_orthogonal_selection((sample, slice(None)))
        out["xgboost"] = {
            "fault_free_s": straight["seconds"],
            "killed_worker_s": resumed["seconds"],
            "lost_s": resumed["seconds"] - straight["seconds"],
            "restarts": resumed["restarts"],
            "rounds": args.rounds,
            "predictions_equal": bool(
                np.array_equal(xgboost_predict(straight["model"], xv), xgboost_predict(resumed["model"], xv))
            ),
        }
        print(json.dumps(out["xgboost"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(out, indent=1))
    lines = [
        f"# One killed worker, {args.rows:,} rows, 2 workers",
        "",
        "| stage | fault-free s | one worker killed s | time lost s | result equal |",
        "|---|---:|---:|---:|---|",
        f"| ETL (killed during the write pass) | {out['etl']['fault_free_s']:.1f} | "
        f"{out['etl']['killed_worker_s']:.1f} | {out['etl']['lost_s']:.1f} | {out['etl']['outputs_equal']} |",
        f"| global XGBoost, {args.rounds} rounds (killed at round ≥ {args.rounds // 2}, resumed from "
        f"{out['xgboost']['restarts']}) | {out['xgboost']['fault_free_s']:.1f} | "
        f"{out['xgboost']['killed_worker_s']:.1f} | {out['xgboost']['lost_s']:.1f} | "
        f"{out['xgboost']['predictions_equal']} |",
    ]
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
