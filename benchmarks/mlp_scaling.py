"""Data-parallel MLP: scaling efficiency of each synchronisation mode, side by side.

Scaling efficiency = data-parallel samples/s ÷ (sum over the workers of each one's
samples/s alone), with the same batch per worker. Each worker alone trains on the rows it
holds in the data-parallel run (the same code path, a process group of one) while the
others idle; the data-parallel modes then run one after the other on the same cluster
and ETL output:

- ``collective gradients``: DistributedDataParallel over gloo, gradients allreduced every step;
- ``collective parameters``: local SGD, parameters averaged over gloo every ``--sync-every`` steps.

(``benchmarks/results/mlp_scaling.md`` also holds the reductions through the Dask
scheduler's task graph that these replaced, measured in the same run before their removal.)

Samples/s are steady-state: the median epoch after the first (which joins the group,
moves the rows and warms up). The final validation loss of every mode is compared with
single-process training with the same global batch (one worker, ``W × batch`` rows per step).

    python benchmarks/mlp_scaling.py --rows 400000 --epochs 4 --batch-sizes 1024,4096

Writes ``benchmarks/results/mlp_scaling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from shardflow.cluster.factory import start
from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.setup.config import default_config_path, load_config
from shardflow.pipelines.setup.generate import generate
from shardflow.pipelines.setup.train_config import MLPConfig
from shardflow.pipelines.training import load_training_data, train_data_parallel_mlp

RESULTS = Path(__file__).parent / "results"


def steady_rate(out: dict, epochs: int) -> float:
    """Samples per second over the epochs after the first (median epoch time)."""
    seconds = out["history"]["seconds"]
    durations = [b - a for a, b in zip(seconds, seconds[1:])]
    return (out["samples"] / epochs) / statistics.median(durations)


def measure(runtime, etl_dir, cfg: MLPConfig, only_worker: int | None = None) -> dict:
    """Train on the ETL output; ``only_worker``: on that worker's partitions alone (the
    other workers idle), as one worker of the data-parallel run would hold them."""
    data = load_training_data(runtime, etl_dir, seed=0)
    if only_worker is not None:
        worker = sorted(set(data.workers))[only_worker]
        keep = [i for i, w in enumerate(data.workers) if w == worker]
        data = replace(
            data,
            futures=[data.futures[i] for i in keep],
            workers=[worker] * len(keep),
            train_rows=[data.train_rows[i] for i in keep],
            valid_rows=[data.valid_rows[i] for i in keep],
            train_weights=[data.train_weights[i] for i in keep],
        )
    out = train_data_parallel_mlp(runtime, data, cfg, seed=0)
    return {
        "samples_per_s": steady_rate(out, cfg.epochs),
        "validation_loss": out["history"]["validation_loss"][-1],
        "workers": out["workers"],
        "steps_per_epoch": out["steps_per_epoch"],
        "sync_every": out["sync_every"],
        "seconds": out["seconds"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1024,4096", help="rows per step per worker, comma-separated")
    parser.add_argument("--sync-every", type=int, default=8, help="local steps between averages (parameters)")
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "mlp_scaling")
    args = parser.parse_args(argv)
    base = dict(hidden=[128, 64], epochs=args.epochs, lr_schedule="constant", lr=1e-3, early_stopping_patience=None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runtime = start(spec="local", n_workers=args.n_workers, threads_per_worker=1, dashboard_address="127.0.0.1:0")
        try:
            generate(tmp / "data", args.rows, seed=0, rows_per_partition=max(1, args.rows // 8), runtime=runtime)
            config = load_config(default_config_path(), [f"output.runs_dir={tmp / 'runs'}"], base_dir=tmp / "data")
            etl_dir = etl(config, runtime=runtime).run_dir / "etl"
        finally:
            runtime.close()

        batches = [int(b) for b in args.batch_sizes.split(",")]
        alone, global_batch, rows = {}, {}, {}
        one = start(spec="local", n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0")
        try:
            for batch in batches:
                global_batch[batch] = measure(
                    one, etl_dir, MLPConfig(**base, batch_size=batch * args.n_workers, sync="gradients")
                )
        finally:
            one.close()
        many = start(spec="local", n_workers=args.n_workers, threads_per_worker=1, dashboard_address="127.0.0.1:0")
        try:
            for batch in batches:
                cfg = MLPConfig(**base, batch_size=batch, sync="gradients")
                alone[batch] = [measure(many, etl_dir, cfg, only_worker=i) for i in range(args.n_workers)]
                for sync in ("gradients", "parameters"):
                    cfg = MLPConfig(**base, batch_size=batch, sync=sync, sync_every=args.sync_every)
                    row = measure(many, etl_dir, cfg)
                    row["efficiency"] = row["samples_per_s"] / sum(a["samples_per_s"] for a in alone[batch])
                    row["loss_vs_global_batch"] = row["validation_loss"] / global_batch[batch]["validation_loss"] - 1
                    rows[f"collective {sync}, batch {batch}"] = row
        finally:
            many.close()

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    result = {
        "rows": args.rows,
        "epochs": args.epochs,
        "batch_sizes": batches,
        "sync_every": args.sync_every,
        "n_workers": args.n_workers,
        "alone": alone,
        "global_batch": global_batch,
        "modes": rows,
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        f"{args.n_workers} workers × 1 thread, {args.rows:,} rows, {args.epochs} epochs, parameter averaging "
        f"every {args.sync_every} steps; commit {commit}, {result['machine']}",
        "",
        "| mode | samples/s | scaling efficiency | final validation loss | vs single process, same global batch |",
        "|---|---:|---:|---:|---:|",
    ]
    for batch in batches:
        lines += [
            f"| each worker alone on its shard, batch {batch} (sum) | "
            f"{sum(a['samples_per_s'] for a in alone[batch]):,.0f} | — | — | — |",
            f"| single process, global batch {batch * args.n_workers} | "
            f"{global_batch[batch]['samples_per_s']:,.0f} | — | {global_batch[batch]['validation_loss']:.5f} | — |",
        ]
        for name, row in rows.items():
            if name.endswith(f"batch {batch}"):
                lines.append(
                    f"| {name} | {row['samples_per_s']:,.0f} | **{row['efficiency']:.3f}** | "
                    f"{row['validation_loss']:.5f} | {row['loss_vs_global_batch']:+.2%} |"
                )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
