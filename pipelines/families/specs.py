"""What each model family *is*: its name, label, kind and what it needs, without its code.

The config (``train.models``), the command line and the plan read these; they import
nothing of the training code, which :mod:`shardflow.pipelines.families.registry` binds to each
spec as a class. A family registered from Python (:func:`shardflow.register_family`) adds
its spec here too, so a config may name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: How a family's models relate to the partitions.
#:
#: ``global``: one model over all partitions; ``per_partition``: one model per group of
#: partitions, trained side by side in one graph; ``combined``: built on the models of the
#: families it ``needs``; ``per_group``: one model per key group, its rows gathered from
#: every partition.
KINDS = ("global", "per_partition", "combined", "per_group")


@dataclass(frozen=True)
class FamilySpec:
    """A model family's identity and needs.

    Attributes
    ----------
    name, label : str
        The config's and files' name (``train.models``), and what tables and plots say.
    kind : str
        One of :data:`KINDS`.
    stage : int
        Training order: lower first (the registry's order breaks ties).
    needs : tuple of str
        Families whose trained models this one is built on.
    default : bool
        Trained when the config lists no ``train.models`` (a family that needs options of
        its own is not).
    small_data_on_one_worker : bool
        A global family that trains on one worker, without collectives, when the data is
        small (``train.xgboost.single_worker``).
    averages_worker_updates : bool
        A global family trained data-parallel by averaging what each worker learned on its
        own partitions: like a per-partition family, it assumes the partitions are samples
        of one table.
    quantizable : bool
        Its models are matrix products ``shardflow export --quantize int8`` can quantize.
    libraries : tuple of str
        Modules its training and prediction load on the workers (imported there as the
        cluster starts, overlapped with the ETL).
    searchable : bool
        ``shardflow tune`` searches its hyperparameters (``train.tune.families``; the search
        itself is the registered family's ``tuning``).
    """

    name: str
    label: str
    kind: str
    stage: int
    needs: tuple = field(default_factory=tuple)
    default: bool = True
    small_data_on_one_worker: bool = False
    averages_worker_updates: bool = False
    quantizable: bool = False
    libraries: tuple = ("xgboost",)
    searchable: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"family {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")

    @property
    def assumes_exchangeable_partitions(self) -> bool:
        """Whether the family's models are built on partitions as samples of one table (so
        the ETL shuffles the rows for it): per-partition models, a combiner of them, and
        data-parallel SGD over the workers' own partitions."""
        return self.kind in ("per_partition", "combined") or self.averages_worker_updates

    def file(self, suffix: str = "json") -> str:
        """A file of the family in the train stage; ``json`` (its metadata) marks it as trained."""
        return f"{self.name}.{suffix}"

    def member_file(self, index: int, suffix: str) -> str:
        """The file of member model ``index`` of a family of several models."""
        return f"{self.name}/model-{index:05d}.{suffix}"


class FamilySkipped(Exception):
    """Raised by a family's ``train`` that cannot train on this data (the linear baseline on
    more coefficients than its Newton fit holds): the run goes on without it, and says why."""


NEURAL = ("shardflow.tasks.neural",)

#: The families shardflow ships, in the order tables and reports list them (the linear
#: baseline first).
BUILT_IN = (
    FamilySpec("linear", "linear baseline", "global", 0, libraries=("shardflow.tasks.linear",)),
    FamilySpec("xgboost", "global XGBoost", "global", 0, small_data_on_one_worker=True, searchable=True),
    FamilySpec("xgboost_partitions", "per-partition XGBoost ensemble", "per_partition", 1),
    FamilySpec("stacked", "stacked ensemble", "combined", 2, needs=("xgboost_partitions",)),
    FamilySpec(
        "mlp",
        "data-parallel MLP",
        "global",
        3,
        averages_worker_updates=True,
        quantizable=True,
        libraries=NEURAL,
        searchable=True,
    ),
    FamilySpec("mlp_partitions", "per-partition MLP ensemble", "per_partition", 1, quantizable=True, libraries=NEURAL),
    FamilySpec(
        "xgboost_groups",
        "per-group XGBoost (train.groups)",
        "per_group",
        2,
        needs=("xgboost",),
        default=False,
    ),
)

#: Every family's spec by name, built-in and registered, in registration order.
SPECS: dict = {spec.name: spec for spec in BUILT_IN}


def family_names() -> tuple:
    """Every family's name, in the order tables and reports list them.

    Examples
    --------
    >>> family_names()[:2]
    ('linear', 'xgboost')
    """
    return tuple(SPECS)


def searchable_families() -> tuple:
    """The families whose hyperparameters ``shardflow tune`` searches.

    Examples
    --------
    >>> searchable_families()
    ('xgboost', 'mlp')
    """
    return tuple(name for name, spec in SPECS.items() if spec.searchable)


def default_families() -> list:
    """The families a config without ``train.models`` trains."""
    return [name for name, spec in SPECS.items() if spec.default]


def spec(name: str) -> FamilySpec:
    """The spec of family ``name``."""
    return SPECS[name]


def label(name: str) -> str:
    """The family's label (the name itself for a name no family has)."""
    found = SPECS.get(name)
    return found.label if found else name


def libraries(names) -> list:
    """The modules the families named load on the workers.

    Examples
    --------
    >>> libraries(["stacked", "mlp"])
    ['shardflow.tasks.neural', 'xgboost']
    """
    return sorted({module for name in names for module in SPECS[name].libraries})


def add_spec(new: FamilySpec, *, replace: bool = False) -> None:
    """Add a registered family's spec (its name must be new, unless ``replace``)."""
    if not isinstance(new.name, str) or not new.name.isidentifier():
        raise ValueError(f"family name {new.name!r}: use letters, digits and underscores (a Python identifier)")
    if new.name in {s.name for s in BUILT_IN}:
        raise ValueError(f"family {new.name!r} is built in; choose another name")
    if new.name in SPECS and not replace:
        raise ValueError(f"family {new.name!r} is registered already; pass replace=True to replace it")
    missing = [n for n in new.needs if n not in SPECS]
    if missing:
        raise ValueError(f"family {new.name!r} needs {missing}, which no registered family is")
    SPECS[new.name] = new
