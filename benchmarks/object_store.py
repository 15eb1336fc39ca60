"""The same job on local disk and in an S3 API server on the loopback interface (issue 15).

    python -m benchmarks.object_store                        # 400,000 rows, 2 repeats (about 8 minutes on 2 cores)
    python -m benchmarks.object_store --rows 30000 --repeats 1   # checks the script itself

The default dataset (generated once, Parquet) is read from a local directory and from
``s3://`` on moto's S3 server started on 127.0.0.1; the run goes to a local runs directory
and to ``s3://`` respectively. One cluster (``cluster: local`` defaults) runs every job, the
two placements alternating, each a new run (``force``), the order reversed every other
repeat. Reported per placement: the wall time of ``shardflow.run`` (ETL, training,
evaluation, report) and of each stage, from the run's manifest; the ratio is S3 / local disk.

moto's server is a Python process on the same cores as the job: it is slower than a real
object store's endpoint and competes with the workers for the CPU. The ratio is thus an
upper bound of the overhead of the object-store path itself (listing, one request per object,
no rename), not a prediction of a cloud bucket's throughput.

Results: ``benchmarks/results/object_store.json`` and ``object_store.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def start_s3_server() -> tuple:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    # Dummy credentials for the loopback server, in the environment before the workers start.
    os.environ.update(AWS_ACCESS_KEY_ID="benchmark", AWS_SECRET_ACCESS_KEY="benchmark", AWS_DEFAULT_REGION="us-east-1")
    server, endpoint = start_s3_server()
    os.environ["SHARDFLOW_STORAGE_ENDPOINTS"] = endpoint  # the config may name this endpoint
    import s3fs

    from shardflow.cluster.config import ClusterConfig
    from shardflow.cluster.factory import start
    from shardflow.pipelines.job import run
    from shardflow.pipelines.records.rundir import read_manifest
    from shardflow.pipelines.setup.config import load_config
    from shardflow.pipelines.setup.generate import generate

    options = {"endpoint_url": endpoint}
    runtime = start(ClusterConfig())
    results = {"local disk": [], "s3 (loopback)": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            generate(data, args.rows, seed=0, runtime=runtime)
            fs = s3fs.S3FileSystem(**options)
            fs.mkdir("bench")
            fs.put(f"{data}/", "bench/data/", recursive=True)
            size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
            placements = {
                "local disk": load_config(data / "trips.yaml", [f"output.runs_dir={Path(tmp) / 'runs'}"]),
                "s3 (loopback)": load_config(
                    data / "trips.yaml",
                    ["output.runs_dir=s3://bench/runs", f"storage_options={json.dumps(options)}"],
                    base_dir="s3://bench/data",
                ),
            }
            for repeat in range(args.repeats):
                order = list(placements) if repeat % 2 == 0 else list(reversed(placements))  # warm-up evens out
                for name in order:
                    config = placements[name]
                    started = time.perf_counter()
                    result = run(config, runtime=runtime, force=True)
                    seconds = time.perf_counter() - started
                    stages = {stage: record.seconds for stage, record in read_manifest(result.run_dir).stages.items()}
                    stages = {k: sum(v.values()) if isinstance(v, dict) else v for k, v in stages.items()}
                    results[name].append({"seconds": seconds, "stages": stages, "run": str(result.run_dir)})
                    print(f"{name}, repeat {repeat + 1}: {seconds:.1f}s {stages}", flush=True)
    finally:
        runtime.close()
        server.terminate()
    summary = {name: statistics.median(r["seconds"] for r in runs) for name, runs in results.items()}
    ratio = summary["s3 (loopback)"] / summary["local disk"]
    report = {
        "rows": args.rows,
        "input_bytes": size,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "median_seconds": summary,
        "ratio_s3_over_local": ratio,
        "runs": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "object_store.json").write_text(json.dumps(report, indent=1))
    lines = [
        "# The same job on local disk and on a loopback S3 server",
        "",
        f"{args.rows:,} rows of the default dataset ({size / 2**20:.1f} MiB of Parquet), every default model, "
        f"median of {args.repeats} runs each, one 2-worker `LocalCluster` ({os.cpu_count()} cores), "
        "`python -m benchmarks.object_store`.",
        "",
        "| placement | run (s) | etl (s) | train (s) | evaluate (s) |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        stage = {s: statistics.median(r["stages"].get(s) or 0 for r in runs) for s in ("etl", "train", "evaluate")}
        lines.append(
            f"| {name} | {summary[name]:.1f} | {stage['etl']:.1f} | {stage['train']:.1f} | {stage['evaluate']:.1f} |"
        )
    lines += [
        "",
        f"S3 / local disk: **{ratio:.2f}×** (moto's server shares the 2 cores with the workers: an "
        "upper bound of the object-store path's overhead).",
        "",
    ]
    (RESULTS / "object_store.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
