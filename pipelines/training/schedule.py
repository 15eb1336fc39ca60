"""The order of the families' training, and which of them share the cluster at once.

Families train in units: a family and the families it trains with in one graph (every
per-partition family). A unit starts once the units it needs are trained. Where the plan
lets families overlap (:func:`overlap_decision`), units that only submit ordinary tasks
(per-partition models, the linear baseline's reductions, the stacked combiner) share the
cluster; a unit that holds every worker at once — a collective (the global XGBoost across
workers, the data-parallel MLP) or one task sizing a whole process's thread pools (the
global XGBoost on one worker with its host's threads) — runs alone: a collective task
waiting for a peer whose thread is busy would hold its own worker idle, and two such units
could each wait for the other. Units start in training order, and a unit that must run alone
starts once the cluster is quiet (the families that share it go first). Each family's
result is what it is trained alone: the tasks are the same and their thread counts do not
change.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

from shardflow.pipelines.families.specs import FamilySkipped

logger = logging.getLogger("shardflow.job")


@dataclass(frozen=True)
class Overlap:
    """Whether independent families share the cluster (``overlap``) and why, as ``shardflow
    plan`` says it."""

    overlap: bool
    reason: str


def overlap_decision(setting: str, processes: bool, n_workers: int) -> Overlap:
    """``train.overlap`` (``auto``, ``true``, ``false``) on a cluster of ``n_workers``.

    ``auto`` overlaps on worker processes with two workers or more. In one process
    (``cluster.processes``: threads) the families' tasks share one process's thread pools
    (torch's is process-wide), so they train one after another; with one worker, nothing is
    left idle for another family to use.

    Examples
    --------
    >>> overlap_decision("auto", processes=True, n_workers=4).overlap
    True
    >>> overlap_decision("auto", processes=False, n_workers=1).reason
    'one after another: one worker of threads in this process shares its thread pools'
    >>> overlap_decision("true", processes=False, n_workers=1).overlap
    False
    """
    setting = str(setting).lower()
    if setting == "false":
        return Overlap(False, "one after another (train.overlap: false)")
    if not processes:
        return Overlap(False, "one after another: one worker of threads in this process shares its thread pools")
    if setting == "true":
        return Overlap(True, "independent families share the cluster (train.overlap: true)")
    if n_workers < 2:
        return Overlap(False, "one after another: one worker leaves nothing idle for another family")
    return Overlap(True, f"independent families share the {n_workers} workers; collectives run alone")


@dataclass(frozen=True)
class Unit:
    """Families trained by one call of the first one's ``train`` (one graph)."""

    families: tuple
    needs: frozenset
    alone: bool

    @property
    def names(self) -> tuple:
        return tuple(f.name for f in self.families)


def training_units(families: list, context) -> list:
    """The families (in training order) grouped into :class:`Unit` s, in training order; a
    per-partition family whose one model is its counterpart's is a unit of its own, after it."""
    reusing = {
        f.name: f.counterpart
        for f in families
        if context is not None and getattr(f, "counterpart", "") and f.reuses_counterpart(context)
    }
    units, placed = [], set()
    names = [f.name for f in families]
    for family in families:
        if family.name in placed:
            continue
        together = family.trained_together(names)
        members = [family] if family.name in reusing else [f for f in families if f.name in together]
        members = [f for f in members if f.name == family.name or f.name not in reusing] or [family]
        placed.update(f.name for f in members)
        member_names = {f.name for f in members}
        needs = {n for f in members for n in (*f.needs, reusing.get(f.name, "")) if n in names} - member_names
        units.append(Unit(tuple(members), frozenset(needs), any(f.holds_every_worker(context) for f in members)))
    return _after_their_needs(units)


def _after_their_needs(units: list) -> list:
    """``units`` in their order, each moved after the units it needs (one whose need is not
    among them keeps its place)."""
    ordered, done, pending = [], set(), list(units)
    names = {n for unit in units for n in unit.names}
    while pending:
        unit = next((u for u in pending if (u.needs & names) <= done), pending[0])
        pending.remove(unit)
        ordered.append(unit)
        done.update(unit.names)
    return ordered


def train_units(context, units: list, overlap: bool) -> None:
    """Train every unit into ``context.results`` (a family that cannot train on this data is
    left out with a warning), overlapping them when ``overlap`` (see the module docstring)."""
    if not overlap or len(units) < 2:
        for unit in units:
            _train_unit(context, unit)
        return
    pending, running, done = list(units), {}, set()
    pool = ThreadPoolExecutor(max_workers=len(units), thread_name_prefix="shardflow-family")
    try:
        while pending or running:
            ready = [unit for unit in pending if unit.needs <= done]
            shared = [unit for unit in ready if not unit.alone]
            if not any(unit.alone for unit in running.values()):
                starting = shared or ([] if running else ready[:1])  # one that runs alone waits for a quiet cluster
                for unit in starting:
                    pending.remove(unit)
                    running[pool.submit(_train_unit, context, unit)] = unit
            if len(running) > 1:
                logger.debug("training together: %s", ", ".join(n for u in running.values() for n in u.names))
            if not running:  # what is left needs a family that could not train: it fails as it would alone
                for unit in pending:
                    _train_unit(context, unit)
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done.update(running.pop(future).names)
                future.result()  # the first failure stops the stage (the others end with the cluster)
    finally:
        pool.shutdown(wait=not running, cancel_futures=True)


def _train_unit(context, unit: Unit) -> None:
    first = unit.families[0]
    started = time.perf_counter()
    try:
        result = first.train(context)
    except FamilySkipped as skipped:
        logger.warning("%s", skipped)
        return
    context.results[first.name] = result
    logger.debug("%s trained in %.1fs", " + ".join(unit.names), time.perf_counter() - started)


def overlap_line(families: list, decision: Overlap) -> str:
    """What ``shardflow plan`` says of the families' order (``families`` in training order).

    Examples
    --------
    >>> from shardflow.pipelines.families.registry import training_order
    >>> families = training_order(["xgboost", "xgboost_partitions", "stacked", "linear"])
    >>> overlap_line(families, overlap_decision("auto", processes=True, n_workers=2))
    'families overlap: linear, xgboost_partitions, stacked share the cluster; xgboost alone'
    """
    units = training_units(families, None)
    shared = [n for unit in units if not unit.alone for n in unit.names]
    if not decision.overlap or len(shared) < 2:
        reason = decision.reason if not decision.overlap else "one after another: no two families can share"
        return f"families {reason}"
    alone = [n for unit in units if unit.alone for n in unit.names]
    return f"families overlap: {', '.join(shared)} share the cluster" + (f"; {', '.join(alone)} alone" if alone else "")
