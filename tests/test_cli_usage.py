"""The command line as people type it: runs named by id, help with examples, errors that say
what to do, the comparison table, Ctrl-C (issue 26, "Terminal, CLI and Python API")."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

QUICK = ["train.models=[xgboost]", "train.xgboost.num_boost_round=10"]


def shardflow(*args, cwd, timeout=180, env=None):
    return subprocess.run(
        [sys.executable, "-m", "shardflow", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


def error_lines(proc) -> list:
    return [line for line in proc.stderr.splitlines() if line.startswith("shardflow: error:") or "Traceback" in line]


def tree(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def job_yaml(trips_dir: Path, directory: Path, runs_dir: str) -> Path:
    """The default job on ``trips_dir``, its runs in ``runs_dir`` (relative to ``directory``)."""
    text = (trips_dir / "trips.yaml").read_text()  # edited as text: YAML 1.1 reads its `on:` as true
    text = text.replace("  path: trips ", f"  path: {trips_dir / 'trips'} ", 1)
    text = text.replace("  - path: zones.parquet", f"  - path: {trips_dir / 'zones.parquet'}", 1)
    text = text.replace("\noutput:\n", f"\noutput:\n  runs_dir: {runs_dir}\n", 1)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "job.yaml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- runs by id


@pytest.fixture(scope="module")
def finished_run(trips_dir, runtime, tmp_path_factory):
    """A finished run in ``<tmp>/work/runs``, made by a job whose config is ``<tmp>/jobs/job.yaml``."""
    from shardflow.pipelines.job import run
    from shardflow.pipelines.setup.config import load_config

    root = tmp_path_factory.mktemp("by-id")
    config = job_yaml(trips_dir, root / "jobs", "../work/runs")
    result = run(load_config(config, QUICK), runtime=runtime)
    assert result.run_dir.parent == root / "work" / "runs"
    return root, config, result.run_dir


def test_the_ids_that_runs_lists_name_the_run_in_every_command(finished_run, trips_dir):
    root, config, run_dir = finished_run
    run_id = run_dir.name
    listed = shardflow("runs", cwd=root, timeout=60)  # the default, ./shardflow-work/runs: not this job's
    assert "no runs in" in listed.stdout
    listed = shardflow("runs", "--work-dir", "work", cwd=root)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[0] == run_id, listed.stderr
    assert shardflow("runs", "-c", config, cwd=root).stdout.splitlines()[1].split()[0] == run_id

    report = str(run_dir / "report.html")
    # The run given positionally or with --run; the runs directory as `run` finds it.
    for args in (
        ["report", run_id, "--work-dir", "work"],
        ["report", "--run", run_id, "--runs-dir", "work/runs"],
        ["report", run_id, "-c", config],
        ["report", run_id, "--run", run_id, "-c", config],
        ["report", str(run_dir)],  # an explicit path is still a path
    ):
        done = shardflow(*args, cwd=root)
        assert done.returncode == 0 and done.stdout.strip() == report, (args, done.stderr)

    done = shardflow("export", run_id, "-c", config, "--out", root / "onnx", cwd=root)
    assert done.returncode == 0 and (root / "onnx" / "model.onnx").is_file(), done.stderr
    done = shardflow(
        "predict",
        run_id,
        "--work-dir",
        "work",
        "--input",
        trips_dir / "trips",
        "--output",
        root / "scores",
        "--cluster",
        "local",
        "--n-workers",
        "1",
        cwd=root,
    )
    assert done.returncode == 0 and list((root / "scores").glob("part-*.parquet")), done.stderr

    # run --resume ID: the run in the config's runs directory, every stage current.
    overrides = [a for o in QUICK for a in ("--set", o)]
    done = shardflow(
        "run", "-c", config, "--resume", run_id, *overrides, "--cluster", "local", "--n-workers", "1", cwd=root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"run:    {run_dir}" in done.stdout and f"run {run_id}: etl, train, evaluate current" in done.stderr
    # The comparison table: aligned columns, not Markdown; the best model marked, and why.
    table = [line for line in done.stdout.split("run:    ")[0].splitlines() if line.strip()]
    assert "|" not in done.stdout
    assert table[0].split() == ["model", "auc", "logloss", "accuracy", "train", "s"]
    assert table[1].startswith("* global XGBoost ") and table[-1] == "* best validation auc"
    assert len({len(line) for line in table[:-1]}) == 1  # fixed-width columns


def test_a_run_that_does_not_exist_is_one_line_and_nothing_is_written(tmp_path):
    work = tmp_path / "work"
    fake = work / "x"  # <runs>/../x: a run directory outside the runs directory
    fake.mkdir(parents=True)
    (fake / "manifest.json").write_text("{}")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = tree(tmp_path)
    missing = f"shardflow: error: no such run: 20260101-000000-abcdef (in {work / 'runs'}); `shardflow runs` lists them"
    for args in (
        ["report", "20260101-000000-abcdef"],
        ["report", "--run", "20260101-000000-abcdef"],
        ["export", "20260101-000000-abcdef", "--out", "onnx"],
        ["predict", "--run", "20260101-000000-abcdef", "--input", "new.csv", "--output", "scores"],
        ["run", "--resume", "20260101-000000-abcdef", "--rows", "1000"],  # the default job: not generated
    ):
        done = shardflow(*args, "--work-dir", work, cwd=cwd, timeout=60)
        assert done.returncode != 0 and error_lines(done) == [missing], (args, done.stderr)
    # An id never reaches outside the runs directory: `../x` is a path, and there is none here.
    for escape in ("../x", str(tmp_path / "nothing")):
        done = shardflow("report", escape, "--work-dir", work, cwd=cwd, timeout=60)
        errors = error_lines(done)
        assert done.returncode != 0 and len(errors) == 1 and f"no such run directory: {escape};" in errors[0]
    assert tree(tmp_path) == before


def test_run_ids_are_names_inside_the_runs_directory(tmp_path, monkeypatch):
    from shardflow.pipelines.interface.commands import ShardflowError, is_run_id, resolve_run

    runs = tmp_path / "runs"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "manifest.json").write_text("{}")
    (runs / "20260101-000000-abcdef").mkdir(parents=True)
    (runs / "20260101-000000-abcdef" / "manifest.json").write_text("{}")
    elsewhere = tmp_path / "a" / "b"  # where ../x is not a directory
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert resolve_run("20260101-000000-abcdef", runs) == runs / "20260101-000000-abcdef"
    assert not any(is_run_id(v) for v in ("../x", "a/b", str(tmp_path / "x"), "..", ".", ""))
    with pytest.raises(ShardflowError, match="no such run directory"):
        resolve_run("../x", runs)  # runs/../x exists, but is not in the runs directory
    assert resolve_run(str(tmp_path / "x"), runs) == tmp_path / "x"  # an explicit path
    with pytest.raises(ShardflowError, match="no such run: nothing"):
        resolve_run("nothing", runs)


# ----------------------------------------------------------------------------- help and errors


def test_every_command_has_a_description_and_an_example():
    from shardflow.pipelines.interface.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"run", "etl", "plan", "predict", "export", "report", "runs", "generate"} <= set(commands)
    for name, command in commands.items():
        assert command.description and len(command.description) > 40, name
        assert command.formatter_class is argparse.RawDescriptionHelpFormatter, name
        assert command.epilog.startswith("example") and f"  shardflow {name} " in command.epilog, name
        text = command.format_help()
        assert command.epilog in text and command.description.splitlines()[0] in text  # as written


def test_plan_finds_the_default_job_as_run_does(runtime, tmp_path):
    from shardflow.pipelines.setup.generate import generate

    absent = shardflow("plan", "--work-dir", tmp_path / "w", "--rows", 3000, cwd=tmp_path, timeout=60)
    errors = error_lines(absent)
    assert absent.returncode == 2 and len(errors) == 1 and "`shardflow run --rows 3000` generates it" in errors[0]
    assert list(tmp_path.iterdir()) == []  # nothing generated, nothing written
    generate(tmp_path / "w" / "data" / "trips-3000", 3000, seed=0, runtime=runtime)  # as `shardflow run` does
    done = shardflow("plan", "--work-dir", tmp_path / "w", "--rows", 3000, "--n-workers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("input ") and "3,000 rows" in done.stdout.splitlines()[0]


def test_a_comma_list_for_a_list_key_shows_the_list_syntax():
    from shardflow.pipelines.setup.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"a list is written in brackets: train\.models=\[xgboost,mlp\]"):
        load_config(overrides=["train.models=xgboost,mlp"])
    with pytest.raises(ConfigError, match=r"train\.mlp\.hidden=\[64,32\]"):
        load_config(overrides=["train.mlp.hidden=64,32"])
    assert load_config(overrides=["train.models=[xgboost,mlp]"]).train.models == ["xgboost", "mlp"]


@pytest.mark.parametrize("name, kind", [("data.csv", "a CSV file"), ("data.parquet", "a Parquet file")])
def test_a_data_file_given_as_the_config_says_what_a_config_is(tmp_path, name, kind):
    (tmp_path / name).write_text("a,b\n1,2\n")
    done = shardflow("run", "-c", name, cwd=tmp_path, timeout=60)
    assert error_lines(done) == [
        f"shardflow: error: {name} is {kind}, not a config: write a job YAML with input.path: {name} (see README)"
    ]
    assert done.returncode == 2 and [p.name for p in tmp_path.iterdir()] == [name]


def test_a_missing_optional_package_names_the_extra_to_install(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['s3fs'] = None  # as if it were not installed\n"
        "from shardflow.pipelines.interface.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    (tmp_path / "no_s3fs.py").write_text(script)
    for args in (["runs", "--runs-dir", "s3://bucket/runs"], ["report", "s3://bucket/runs/20260101-000000-abcdef"]):
        done = subprocess.run(
            [sys.executable, "no_s3fs.py", *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        assert done.returncode == 2 and error_lines(done) == [
            'shardflow: error: s3fs is not installed (needed for s3:// paths): pip install "shardflow[s3]"'
        ], done.stderr


# ----------------------------------------------------------------------------- the comparison and Ctrl-C


def test_the_comparison_table_is_aligned_with_the_best_model_marked(tmp_path):
    from shardflow.pipelines.interface.console import comparison_text

    (tmp_path / "evaluate").mkdir()
    metrics = {
        "xgboost": {"auc": 0.81234, "logloss": 0.45, "accuracy": 0.8},
        "mlp": {"auc": 0.84, "logloss": 0.4, "accuracy": 0.81},
        "stacked": {"auc": 0.8, "logloss": 0.5, "accuracy": 0.79},
    }
    seconds = {"xgboost": 12.34, "mlp": 105.0, "stacked": 0.2}
    (tmp_path / "evaluate" / "metrics.json").write_text(
        json.dumps({"task": "classification", "metrics": metrics, "train_seconds": seconds})
    )
    lines = comparison_text(tmp_path).splitlines()
    assert "|" not in "".join(lines) and len(lines) == 5
    assert lines[0].split() == ["model", "auc", "logloss", "accuracy", "train", "s"]
    assert [line[:2] for line in lines] == ["  ", "  ", "* ", "  ", "* "]
    assert "data-parallel MLP" in lines[2] and lines[-1] == "* best validation auc"
    assert len({len(line) for line in lines[:-1]}) == 1
    ends = {line.index("0.8123") + 6 for line in lines if "0.8123" in line} | {lines[2].index("0.8400") + 6}
    assert len(ends) == 1 and lines[0].index("auc") + 3 in ends  # numbers right-aligned under their header


def test_ctrl_c_during_run_prints_the_command_that_resumes_it(trips_dir, tmp_path):
    config = job_yaml(trips_dir, tmp_path, "runs")
    args = ["run", "-c", config.name, "--n-workers", "2", "--set", "train.models=[xgboost]"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardflow", *args, "--set", "train.xgboost.num_boost_round=300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:  # the ETL is complete
        found = list((tmp_path / "runs").glob("*/manifest.json")) if (tmp_path / "runs").exists() else []
        try:
            if found and "etl" in json.loads(found[0].read_text()).get("stages", {}):
                break
        except ValueError:
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    run_dir = found[0].parent
    prefix = "shardflow: interrupted; continue with: "
    assert last.startswith(prefix) and "Traceback" not in err, err[-3000:]
    command = shlex.split(last[len(prefix) :])
    assert command[:4] == ["shardflow", "run", "--resume", run_dir.name]
    assert command[4:] == [*args[1:], "--set", "train.xgboost.num_boost_round=300"]
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run:    {run_dir}" in done.stdout and f"run {run_dir.name}: etl current" in done.stderr
