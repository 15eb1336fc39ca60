"""Where a run keeps its tuning: ``<run>/tune/`` (the studies' journal, ``tune.json``), read
without loading Optuna (the report reads the records)."""

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


def read_records(run_dir) -> list:
    """The studies of the run's ``tune.json``, one record per searched family (empty: the run
    was not tuned)."""
    path = tune_file(run_dir, "result")
    return list(json.loads(path.read_text())["studies"].values()) if path.exists() else []
