"""Where a run keeps its tuning: ``<run>/tune/`` (the study's journal, ``tune.json``), read
without loading Optuna (the report reads the record)."""

from __future__ import annotations

import json

from shardflow.pipelines.records.rundir import RunDir

#: The tuning's folder in a run directory, and its files there (the run's stages are named by
#: :class:`~shardflow.pipelines.records.rundir.RunDir`; tuning is no stage of its own).
TUNE_DIR = "tune"
TUNE_FILES = {"study": "study.journal", "result": "tune.json", "scratch": "trials"}


def tune_file(run_dir, what: str):
    """``<run>/tune/<file>``: the study's journal (``study``), the record (``result``), the
    distributed trials' checkpoints (``scratch``).

    Examples
    --------
    >>> tune_file("/runs/20261122-101500-ab12cd", "result").as_posix()
    '/runs/20261122-101500-ab12cd/tune/tune.json'
    """
    return RunDir(run_dir).path / TUNE_DIR / TUNE_FILES[what]


def read_record(run_dir) -> dict | None:
    """The run's ``tune.json`` (None: the run was not tuned)."""
    path = tune_file(run_dir, "result")
    return json.loads(path.read_text()) if path.exists() else None
