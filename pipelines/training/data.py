"""Training data on the workers: placement of the ETL's partitions, and re-placement after a failure.

Data placement is explicit and deterministic: partition ``i`` of the ETL's Zarr arrays
is read by, and stays on, worker ``i mod W`` (workers sorted by address). Every model
family then computes where the rows already are; only models, parameters, gradients
and metrics cross the network.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dask.base import tokenize

from shardflow.cluster.factory import Runtime, check_scheduler
from shardflow.core.storage import location, zarr_store
from shardflow.pipelines.records.manifest import EtlSummary
from shardflow.pipelines.records.rundir import RunDir
from shardflow.tasks import shards as shard_tasks
from shardflow.tasks.encode import Preprocessor
from shardflow.tasks.metric_sums import Scoring

logger = logging.getLogger("shardflow.train")


@dataclass
class TrainingData:
    """The ETL output loaded onto the workers, one :class:`Shard` future per partition."""

    futures: list
    workers: list  #: worker address holding each partition
    train_rows: list
    valid_rows: list
    preprocessor: Preprocessor
    token: str
    etl_dir: Path = None
    seed: int = 0
    attempt: int = 0
    #: How predictions are scored (see :class:`~shardflow.tasks.metric_sums.Scoring`).
    scoring: Scoring = None
    #: Training weight of each partition (its rows, or the sum of their sample weights).
    train_weights: list = None

    @property
    def feature_names(self) -> list:
        return self.preprocessor.feature_names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def task(self) -> str:
        """The resolved target kind (``classification``, ``multiclass``, ``regression``)."""
        return self.preprocessor.task

    @property
    def classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.preprocessor.classes)

    def feature_types(self, categorical: bool) -> list:
        n_num = len(self.preprocessor.numeric)
        return ["q"] * n_num + ["c" if categorical else "q"] * (self.n_features - n_num)


def sorted_workers(client) -> list:
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        try:
            client.wait_for_workers(1, timeout=30)
        except TimeoutError:
            pass
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        raise RuntimeError("the cluster has no workers; start some or check config key 'cluster.spec'")
    return workers


def load_training_data(runtime: Runtime, etl_dir, seed: int = 0, attempt: int = 0) -> TrainingData:
    """Read each partition's rows on its worker and keep them there (futures).

    Parameters
    ----------
    runtime : Runtime
    etl_dir : path
        The ETL stage output (:meth:`RunDir.stage`).
    seed : int
        Seeds the per-partition shuffles.
    attempt : int
        Reloads after a failure use new task keys, so they never race the old ones.
    """

    import zarr

    etl_dir = location(etl_dir)
    zarr_path = RunDir.etl_file(etl_dir, "zarr")
    preprocessor_text = RunDir.etl_file(etl_dir, "preprocessor").read_text()
    preprocessor = Preprocessor.from_json(preprocessor_text)
    attrs = zarr.open_group(zarr_store(zarr_path, read_only=True), mode="r").attrs
    offsets, rows = attrs["partition_offsets"], attrs["partition_rows"]
    client = runtime.client
    workers = sorted_workers(client)
    # The token names the data: the same ETL output (its fitted preprocessing included) and seed.
    summary_path = RunDir.etl_file(etl_dir, "summary")
    summary = EtlSummary.from_json(summary_path.read_text(), summary_path)
    token = tokenize(str(etl_dir.resolve()), preprocessor_text, summary.rows, seed)[:10]
    placement = [workers[i % len(workers)] for i in range(len(rows))]
    prefix = f"train-load-partition-{token}" + (f"-retry{attempt}" if attempt else "")
    futures = [
        client.submit(
            shard_tasks.read_shard,
            zarr_path,
            offsets[i],
            rows[i],
            seed * 1_000_003 + i,
            key=f"{prefix}-{i}",
            workers=[placement[i]],
            # a preference: if the worker is lost, the partition is read again elsewhere
            allow_other_workers=True,
        )
        for i in range(len(rows))
    ]
    sizes = client.gather(
        [
            client.submit(shard_tasks.shard_sizes, f, key=f"{prefix}-sizes-{i}", workers=[placement[i]])
            for i, f in enumerate(futures)
        ]
    )
    return TrainingData(
        futures,
        placement,
        [s[0] for s in sizes],
        [s[1] for s in sizes],
        preprocessor,
        token,
        etl_dir,
        seed,
        scoring=scoring_for(preprocessor, summary),
        train_weights=[s[2] for s in sizes],
    )


def scoring_for(preprocessor: Preprocessor, summary: EtlSummary) -> Scoring:
    """How a run's predictions are scored: its target kind, transform and classes, and the
    target's spread (from the ETL summary) for the report's residual histograms."""
    std = summary.target_std or 1.0
    low, high = summary.target_min, summary.target_max
    return Scoring(
        preprocessor.task,
        preprocessor.target_transform,
        residual_range=4 * std,
        value_range=(low, high if high > low else low + 1.0),
        classes=len(preprocessor.classes),
    )


def call_token(prefix: str) -> str:
    """A key suffix unique to one call: training tasks are not pure, so two calls with
    the same inputs must never share keys (a finished call's results could be returned)."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def stop_if_scheduler_lost(runtime, data: TrainingData) -> None:
    """Raise a one-line ``ClusterError`` naming the run to ``--resume`` if the scheduler is gone:
    it took the workers and every future with it, so no retry can help."""
    check_scheduler(runtime.client, run=location(data.etl_dir).parent.name if data.etl_dir else None)


def recover(runtime, data: TrainingData, n_workers: int, timeout: float = 60.0) -> TrainingData:
    """After a failed collective step: wait for the workers to come back, place the data again.

    A failed collective can take worker processes down after the error is seen, so
    the worker set must stay unchanged for a moment before the data is placed again.
    """
    client = runtime.client
    stop_if_scheduler_lost(runtime, data)
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        current = sorted(client.scheduler_info(n_workers=-1)["workers"])
        if current and current == previous and (len(current) >= n_workers or time.monotonic() > deadline):
            break
        if time.monotonic() > deadline + timeout:
            raise RuntimeError("the workers did not come back after a failure; check the cluster (cluster.spec)")
        previous = current
        time.sleep(1.0)
    if len(current) < n_workers:
        logger.warning(
            "only %d of %d workers came back within %.0fs; continuing on them", len(current), n_workers, timeout
        )
    data.attempt += 1
    fresh = load_training_data(runtime, data.etl_dir, data.seed, attempt=data.attempt)
    # In place: every later stage of this training must use the data as it is now placed.
    data.futures, data.workers = fresh.futures, fresh.workers
    return data
