"""The input plan: a job's input inspected once, shared by every stage that needs it."""

from __future__ import annotations

import dask.dataframe as dd

from shardflow.pipelines.config import Config
from shardflow.pipelines.source import (
    dimension_frames,
    inspect_source,
    load_dimensions,
    prepared_meta,
    read_source,
    table_spec,
)
from shardflow.tasks.schema import TableSpec


class InputPlan:
    """A job's input, inspected once: what is read and how it is split (the files' footers
    and headers), the dimension tables, and the table spec checked against both.

    Built once per job and handed to every stage that needs it (stage keys, the ETL,
    prediction), so no footer is read twice. The dimension tables and the spec are
    loaded on first use: deciding that a stage is current needs only the fingerprints.

    Examples
    --------
    >>> from shardflow.pipelines.config import load_config
    >>> plan = InputPlan(load_config("job.yaml"))  # doctest: +SKIP
    >>> len(plan.source.pieces), plan.spec.feature_names  # doctest: +SKIP
    """

    def __init__(self, config: Config, *, for_prediction: bool = False, threads: int | None = None):
        self.config = config
        self.for_prediction = for_prediction
        self.threads = threads
        self.source = inspect_source(config, threads)
        self._dimensions = None
        self._spec = None

    def with_threads(self, threads: int) -> "InputPlan":
        """This plan for a cluster of ``threads`` worker threads: the input inspected again
        only when ``input.partitions: auto`` would split it differently."""
        if self.config.input.partitions != "auto" or threads == self.threads:
            return self
        planned = InputPlan(self.config, for_prediction=self.for_prediction, threads=threads)
        if [p for p in planned.source.pieces] == list(self.source.pieces):
            return self
        planned._dimensions = self._dimensions
        return planned

    @property
    def dimensions(self) -> list:
        if self._dimensions is None:
            self._dimensions = load_dimensions(self.config, self.source)
        return self._dimensions

    @property
    def spec(self) -> TableSpec:
        if self._spec is None:
            self._spec = table_spec(self.config, self.source, self.dimensions, for_prediction=self.for_prediction)
        return self._spec

    def dimension_paths(self) -> list:
        """The dimension tables' paths, resolved (without reading them)."""
        return [self.config.resolve(j.path) for j in self.config.joins]

    def read(self, backend_name: str = "pandas") -> dd.DataFrame:
        """The raw input as a lazy Dask DataFrame (see :func:`read_source`)."""
        return read_source(self.config, backend_name, self.source, self.spec)

    def dimension_frames(self, backend_name: str) -> list:
        return dimension_frames(self.dimensions, backend_name)

    def check_expressions(self, backend_name: str) -> None:
        """Fail now, on the client, if the configured features cannot be computed."""
        prepared_meta(self.source, self.spec, self.dimensions, backend_name)
