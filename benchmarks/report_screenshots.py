"""Screenshots of the run report (``report.html``) in headless Chromium, to look at the page as people see it.

    python benchmarks/report_screenshots.py                      # three small jobs: binary, multi-class, regression
    python benchmarks/report_screenshots.py RUN_DIR [RUN_DIR ...] # reports of runs you have
    python benchmarks/report_screenshots.py --height 9000        # more of each page (1280 px wide)

Without run directories it generates one small table (6,000 rows in three CSV files), runs
three jobs on it with every model family on a local cluster of two worker processes
(``churned``: binary; ``plan``: four classes; ``price``: a regression target in the
thousands, trained on ``log1p``), and rebuilds each run's report. Each page is then drawn
by ``chromium --headless --screenshot`` into ``benchmarks/results/report/<name>.png`` (``--out``
to change), with a copy of the page beside it. Needs Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

OUT = Path(__file__).resolve().parent / "results" / "report"
#: Short training, so the three jobs take about a minute on two cores; the MLPs keep enough
#: steps for several evaluations (one per 50 steps), so their curves are curves.
FAST = {
    "xgboost": {"num_boost_round": 60},
    "partitions": {"xgboost_rounds": 30},
    "mlp": {"max_steps": 300, "batch_size": 256, "sync_every": 8},
}
#: The three jobs: target and features of each, on the same table.
JOBS = {
    "binary": {
        "target": {"column": "churned"},
        "features": {"numeric": ["x1", "x2"], "categorical": ["city"]},
    },
    "multiclass": {
        "target": {"column": "plan", "task": "classification"},
        "features": {"numeric": ["x1", "x2"], "categorical": ["city"]},
    },
    "regression": {
        "target": {"column": "price", "task": "regression", "transform": "log1p"},
        "features": {"numeric": ["area", "rooms"], "categorical": ["city"]},
    },
}


def demo_table(n: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A table with a binary, a four-class and a price target (in the thousands, skewed)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    city = rng.choice(["north", "south", "east"], n)
    score = x1 + 0.6 * x2 + 0.8 * (city == "north") + rng.normal(scale=0.3, size=n)
    plan = np.select([score < -0.8, score < 0.3, score < 1.2], ["basic", "plus", "pro"], "enterprise")
    churned = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-(1.5 * x1 - x2 - 1.0))), "yes", "no")
    area, rooms = rng.uniform(30, 250, n), rng.integers(1, 7, n)
    noise = rng.normal(scale=0.15, size=n)
    price = np.exp(7.0 + 0.012 * area + 0.08 * rooms + 0.2 * (city == "north") + noise)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x1": x1.round(4),
            "x2": x2.round(4),
            "city": city,
            "plan": plan,
            "churned": churned,
            "area": area.round(1),
            "rooms": rooms,
            "price": price.round(2),
        }
    )


def run_jobs(directory: Path, rows: int, runtime=None) -> dict:
    """Run the three :data:`JOBS` under ``directory``; ``{name: run directory}``."""
    from shardflow.pipelines.families.registry import FAMILIES
    from shardflow.pipelines.job import run
    from shardflow.pipelines.setup.config import load_config

    table = demo_table(rows)
    (directory / "in").mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(table)), 3)):
        table.iloc[part].to_csv(directory / "in" / f"part{i}.csv", index=False)
    runs = {}
    for name, job in JOBS.items():
        home = directory / name
        home.mkdir(exist_ok=True)
        config = {
            "input": {"path": str(directory / "in" / "*.csv")},
            **job,
            "split": {"key": ["id"]},
            "encode": {"min_frequency": 1},
            "train": {
                **FAST,
                "models": list(FAMILIES),
                "groups": {"partition_by": ["city"], "min_rows": 50, "xgboost_rounds": 30},
            },
            "output": {"runs_dir": "runs"},
        }
        (home / "job.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        runs[name] = run(load_config(home / "job.yaml"), runtime=runtime).run_dir
    return runs


def chromium() -> str | None:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 4000, timeout: float = 120) -> Path:
    """Draw ``page`` (an HTML file) in headless Chromium into ``png``, ``width`` × ``height`` pixels."""
    browser = chromium()
    if browser is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={width},{height}",
                page.resolve().as_uri(),
            ],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return png


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run directories (default: three small jobs)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the PNGs go (default {OUT})")
    parser.add_argument("--rows", type=int, default=6000, help="rows of the generated table")
    parser.add_argument("--height", type=int, default=4000, help="pixels of each page drawn (1280 wide)")
    args = parser.parse_args(argv)

    from shardflow.pipelines.interface.report import build_report

    with tempfile.TemporaryDirectory() as tmp:
        if args.runs:
            runs = {path.name: path for path in args.runs}
        else:
            from shardflow.cluster.factory import start

            runtime = start(spec="local", n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0")
            try:
                runs = run_jobs(Path(tmp), args.rows, runtime)
            finally:
                runtime.close()
        for name, run_dir in runs.items():
            page = build_report(run_dir)
            png = screenshot(page, args.out / f"{name}.png", height=args.height)
            shutil.copyfile(page, args.out / f"{name}.html")
            print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
