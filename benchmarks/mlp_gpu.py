"""The data-parallel MLP on a GPU (NCCL process group) beside the CPU (gloo), same data.

One worker per side: the GPU side's worker trains on ``cuda`` over an NCCL group of
one rank; the CPU side's worker uses all the machine's cores. Steady-state samples/s
(median epoch after the first) and the final validation loss.

    python benchmarks/mlp_gpu.py --rows 1000000 --batch-size 4096

Prints a Markdown table and writes it to ``--out`` (default
``benchmarks/results/gpu/mlp_nccl.md``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.mlp_scaling import steady_rate
from shardflow.cluster.factory import start
from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.setup.config import default_config_path, load_config
from shardflow.pipelines.setup.generate import generate
from shardflow.pipelines.setup.train_config import MLPConfig
from shardflow.pipelines.training import load_training_data, train_data_parallel_mlp


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu" / "mlp_nccl.md")
    args = parser.parse_args(argv)
    import torch

    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runtime = start(spec="local", n_workers=1, threads_per_worker=cores, dashboard_address="127.0.0.1:0")
        try:
            generate(tmp / "data", args.rows, seed=0, rows_per_partition=max(1, args.rows // 8), runtime=runtime)
            config = load_config(default_config_path(), [f"output.runs_dir={tmp / 'runs'}"], base_dir=tmp / "data")
            etl_dir = etl(config, runtime=runtime).run_dir / "etl"
            data = load_training_data(runtime, etl_dir, seed=0)
            for device in ("cuda", "cpu"):
                cfg = MLPConfig(
                    hidden=[128, 64],
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    sync="gradients",
                    lr_schedule="constant",
                    lr=1e-3,
                    early_stopping_patience=None,
                    device=device,
                )
                out = train_data_parallel_mlp(runtime, data, cfg, seed=0)
                rows.append(
                    (
                        device,
                        out["backend"],
                        steady_rate(out, args.epochs),
                        out["history"]["validation_loss"][-1],
                        out["seconds"],
                    )
                )
        finally:
            runtime.close()
    lines = [
        f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}, NCCL "
        f"{'.'.join(map(str, torch.cuda.nccl.version()))}; {args.rows:,} rows, batch {args.batch_size}, "
        f"{args.epochs} epochs, one worker ({cores} CPU threads)",
        "",
        "| device | process group | samples/s | final validation loss | seconds |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {d} | {b} | {r:,.0f} | {v:.5f} | {s:.1f} |" for d, b, r, v, s in rows]
    lines.append(f"\nGPU / CPU samples/s: **{rows[0][2] / rows[1][2]:.2f}×**")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
