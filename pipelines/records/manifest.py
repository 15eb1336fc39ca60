"""A run's records as types: its manifest (``manifest.json``) and the ETL's summary (``summary.json``).

Both are JSON files in an untrusted directory (shared, copied, cut short by a full disk):
each is parsed and validated once, here, into a dataclass whose fields every other module
reads by name. Keys a newer or older version wrote and this one does not know are kept
(``other``) and written back unchanged. :class:`~shardflow.pipelines.records.rundir.RunDir` reads
and writes them (atomically).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

from shardflow.core.errors import ShardflowError


class ManifestError(ShardflowError):
    """A run's ``manifest.json`` cannot be read: the message names the file and why."""

    def __init__(self, path, why: str):
        from shardflow.core.storage import location

        super().__init__(
            f"{path}: damaged ({why}); the run cannot be used: restore the file, or remove the run "
            f"directory {location(path).parent} and run again"
        )
        self.path = path


def stage_of(relative: str) -> str:
    """The stage an artifact's manifest name belongs to (``train@x-1-ab12cd34/a.json`` → ``train``)."""
    return relative.split("/", 1)[0].split("@", 1)[0]


def _known(cls, data: dict) -> tuple:
    """``(the fields of dataclass cls in data, the other keys)``."""
    names = {f.name for f in fields(cls)} - {"other", "exists"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


def _without_none(data: dict) -> dict:
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class StageRecord:
    """A completed stage, as the manifest records it.

    Attributes
    ----------
    completed : str
        When it completed (local time, ISO 8601 to the second).
    key : str or None
        Its stage key (:mod:`shardflow.pipelines.records.stages`): the stage is current for a job
        whose key is equal.
    seconds : float or dict, optional
        Its wall time (per family for training).
    wall_seconds : float, optional
        Training's wall time as a whole (less than the sum of its families' where they
        overlapped).
    rows, partitions : int, optional
        Rows and partitions written (the ETL).
    models : list of str, optional
        The families trained (training).
    """

    completed: str = ""
    key: str | None = None
    seconds: float | dict | None = None
    wall_seconds: float | None = None
    rows: int | None = None
    partitions: int | None = None
    models: list | None = None
    other: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, path, stage: str) -> StageRecord:
        if not isinstance(data, dict):
            raise ManifestError(path, f"a stage's entry ({stage!r}) is not a JSON object")
        known, other = _known(cls, data)
        if not isinstance(known.get("key", ""), (str, type(None))) or not isinstance(known.get("completed", ""), str):
            raise ManifestError(path, f"a stage's key or completion time ({stage!r}) is not text")
        return cls(**known, other=other)

    def to_dict(self) -> dict:
        data = asdict(self)
        return {**_without_none({k: v for k, v in data.items() if k != "other"}), **self.other}


#: The manifest's sections and their JSON types: a manifest whose sections are of another
#: type would fail later with a traceback far from the file, so it is damaged too.
SECTION_TYPES = {
    "stages": dict,
    "artifacts": dict,
    "locations": dict,
    "seeds": dict,
    "input": dict,
    "cluster": dict,
    "versions": dict,
    "plan": dict,
    "tracking": dict,
    "joins": list,
}


@dataclass(frozen=True)
class Manifest:
    """A run's ``manifest.json``: what each stage completed under which key, the SHA-256 of
    every file scoring reads, and how the run was made.

    Attributes
    ----------
    run_id : str or None
        The run directory's name.
    stages : dict of str to StageRecord
        The completed stages.
    artifacts : dict of str to str
        ``{path relative to the run: sha256}`` of the files loading checks.
    locations : dict of str to str
        On an object store, the prefix that holds each committed stage.
    seeds, input, cluster, versions, plan, tracking : dict
        The split and training seeds, the input's path and fingerprint, the cluster's
        layout, library versions, the ETL's plan, the MLflow run.
    joins : list of dict
        Each dimension table's path and SHA-256 (scoring reads them again).
    exists : bool
        Whether the run has a manifest (False: an empty record of a directory without one).
    """

    run_id: str | None = None
    stages: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    locations: dict = field(default_factory=dict)
    seeds: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    plan: dict | None = None
    tracking: dict = field(default_factory=dict)
    joins: list = field(default_factory=list)
    other: dict = field(default_factory=dict)
    exists: bool = False

    def __bool__(self) -> bool:
        return self.exists

    @classmethod
    def from_bytes(cls, raw: bytes, path) -> Manifest:
        """Parse and validate a manifest file's bytes (``path`` names it in errors).

        Raises
        ------
        ManifestError
            Truncated, not UTF-8 JSON, not an object, or a section of the wrong type.

        Examples
        --------
        >>> Manifest.from_bytes(b'{"stages": {"etl": {"key": "k", "rows": 3}}}', "m.json").stages["etl"].rows
        3
        >>> try:
        ...     Manifest.from_bytes(b'{"stages": []}', "m.json")
        ... except ManifestError as err:
        ...     print(str(err)[:50])
        m.json: damaged ('stages' is not a JSON object); t
        """
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ManifestError(path, "not UTF-8 text") from None
        except json.JSONDecodeError as err:
            where = f"at line {err.lineno} column {err.colno}"
            why = "empty file" if not err.doc.strip() else f"not valid JSON: {err.msg} {where}"
            raise ManifestError(path, why) from None
        if not isinstance(data, dict):
            raise ManifestError(path, f"holds a {type(data).__name__}, not a JSON object")
        for section, kind in SECTION_TYPES.items():
            if section in data and not isinstance(data[section], kind):
                raise ManifestError(path, f"'{section}' is not a JSON {'object' if kind is dict else 'array'}")
        known, other = _known(cls, data)
        stages = {name: StageRecord.from_dict(info, path, name) for name, info in known.pop("stages", {}).items()}
        return cls(**known, stages=stages, other=other, exists=True)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k not in ("other", "exists", "stages")}
        data = {**_without_none(data), "stages": {n: r.to_dict() for n, r in self.stages.items()}, **self.other}
        return json.dumps(data, indent=1, default=str)

    def has(self, stage: str) -> bool:
        """Whether ``stage`` completed."""
        return stage in self.stages

    def key_of(self, stage: str) -> str | None:
        """The key ``stage`` completed under (None: not completed)."""
        record = self.stages.get(stage)
        return record.key if record is not None else None

    def merged(self, *, stages: dict | None = None, artifacts: dict | None = None, replace_artifacts=None, **sections):
        """This manifest with ``stages`` (``{name: StageRecord}``) and ``artifacts`` merged by
        key and the other ``sections`` replaced; ``replace_artifacts`` (a stage) first drops
        the recorded hashes of that stage's files, so a recomputed stage leaves none stale."""
        kept = dict(self.artifacts)
        if replace_artifacts is not None:
            kept = {k: v for k, v in kept.items() if stage_of(k) != replace_artifacts}
        return replace(
            self,
            **sections,
            stages={**self.stages, **(stages or {})},
            artifacts={**kept, **(artifacts or {})},
            exists=True,
        )

    def without_stage(self, stage: str, location: str | None = None) -> Manifest:
        """This manifest with ``stage`` no longer completed (its record and file hashes gone);
        ``location``: the object-store prefix that will hold it once recorded again."""
        return replace(
            self,
            stages={n: r for n, r in self.stages.items() if n != stage},
            artifacts={k: v for k, v in self.artifacts.items() if stage_of(k) != stage},
            locations={**self.locations, **({stage: location} if location else {})},
            exists=True,
        )


@dataclass(frozen=True)
class EtlSummary:
    """The ETL stage's ``summary.json``: what was written, the target's statistics, and what
    the joins and partitions looked like (the report and training read it).

    ``drift_reference``: each feature's bins and its training rows' counts in them, what
    ``predict`` measures drift against (:func:`~shardflow.tasks.drift.reference_of`); empty
    for a run made before the ETL kept it."""

    rows: int = 0
    partitions: int = 0
    validation_rows: int = 0
    quarantined: dict = field(default_factory=dict)
    quarantined_rows: int = 0
    partition_rows: list = field(default_factory=list)
    partition_quarantined: list = field(default_factory=list)
    feature_names: list = field(default_factory=list)
    zarr_chunk_rows: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)
    backend: str = "pandas"
    joins: dict = field(default_factory=dict)
    target_mean: float = 0.0
    target_std: float = 1.0
    target_min: float = 0.0
    target_max: float = 1.0
    task: str = ""
    classes: dict = field(default_factory=dict)
    partition_differences: dict = field(default_factory=dict)
    drift_reference: dict = field(default_factory=dict)
    other: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path) -> EtlSummary | None:
        """The summary at ``path`` (None where the ETL has not completed)."""
        from shardflow.core.storage import location

        path = location(path)
        return cls.from_json(path.read_text(), path) if path.exists() else None

    @classmethod
    def from_json(cls, text: str, path) -> EtlSummary:
        """Parse ``summary.json`` (``path`` names it in errors)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ShardflowError(f"{path}: damaged (not valid JSON: {err.msg}); run the ETL again (--force)") from None
        if not isinstance(data, dict):
            raise ShardflowError(f"{path}: damaged (not a JSON object); run the ETL again (--force)")
        known, other = _known(cls, data)
        return cls(**known, other=other)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k != "other"}
        return json.dumps({**data, **self.other}, indent=1)


def library_versions() -> dict:
    """Versions of the libraries a run's results depend on (absent ones omitted), for the manifest."""
    from importlib import metadata

    names = [
        "shardflow",
        "dask",
        "distributed",
        "pandas",
        "pyarrow",
        "numpy",
        "zarr",
        "xgboost",
        "torch",
        "scikit-learn",
        "cudf-cu13",
        "dask-cuda",
    ]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
