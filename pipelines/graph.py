"""Small graph-building helpers shared by the pipelines."""

from __future__ import annotations

import dask
from dask.base import tokenize


def task_names(stage: str, *token_parts) -> callable:
    """A function giving dashboard-friendly keys ``(f"{stage}-{token}", i, ...)``.

    The key prefix (``etl-profile``, ``train-xgboost``) is what the dashboard's task
    stream and progress bars show, so it says which stage and operation runs.
    """
    token = tokenize(*token_parts)[:8]

    def name(*index):
        return (f"{stage}-{token}", *index)

    return name


def scatter_named(client, name: str, value, broadcast: bool = True):
    """``client.scatter`` of one object under a key that says what it is (``evaluate-models-…``).

    Scattered objects are otherwise keyed by their type (``dict-…``, ``list-…``) and
    the dashboard cannot tell them apart.
    """
    import uuid

    key = f"{name}-{uuid.uuid4().hex[:8]}"
    return client.scatter({key: value}, broadcast=broadcast, hash=False)[key]


def named_delayed(name: str, value):
    """``value`` as a pure Delayed named ``{name}-{token}`` (not by its type: ``list-…``)."""
    return dask.delayed(value, name=f"{name}-{tokenize(value)}", pure=True, traverse=False)


def tree_reduce(items, combine, stage: str, split_every: int = 8):
    """Combine Delayed ``items`` pairwise-associatively in a tree of fan-in ``split_every``.

    Returns one Delayed; the client receives only the final, small result.
    """
    if not items:
        raise ValueError(f"{stage}: nothing to reduce")
    level = 0
    token = tokenize(stage, [getattr(i, "key", i) for i in items])[:8]
    while len(items) > 1:
        grouped = []
        for j in range(0, len(items), split_every):
            group = items[j : j + split_every]
            grouped.append(
                dask.delayed(_combine_all, pure=True)(
                    combine, *group, dask_key_name=(f"{stage}-{token}-L{level}", j // split_every)
                )
            )
        items, level = grouped, level + 1
    return items[0]


def tree_reduce_futures(client, futures, combine, name: str, split_every: int = 4):
    """:func:`tree_reduce` for futures already on the cluster: returns one future.

    Nothing comes to the client; each combine task runs next to its inputs.
    """
    level = 0
    while len(futures) > 1:
        futures = [
            client.submit(
                _combine_all,
                combine,
                *futures[i : i + split_every],
                key=f"{name}-L{level}-{i // split_every}",
                pure=False,
            )
            for i in range(0, len(futures), split_every)
        ]
        level += 1
    return futures[0]


def _combine_all(combine, first, *rest):
    out = first
    for item in rest:
        out = combine(out, item)
    return out


def shuffled_partitions(parts: list, *, seed: int, name: str, token, max_branch: int = 64) -> list:
    """The prepared partitions with their rows redistributed at random (seeded, deterministic).

    A staged all-to-all, as Dask's ``tasks`` shuffle method does it, with every task named
    for the dashboard (``{name}-keys``, ``-split``, ``-take``, ``-concat``, ``-combine``):
    each row gets a uniform hash key and goes to partition ``floor(key * N)``, where its
    partition's rows are sorted by key. The rows' global order is thus the same whatever
    ``N``; each partition keeps its own quarantined rows and counts. Up to ``max_branch``
    partitions in one stage of ``N²`` small tasks; beyond, in ``S`` stages that each route
    rows by one digit of their destination in base ``B = ceil(N ** (1 / S))`` among groups
    of ``B`` partitions (``S · B^S · (B + 2)`` tasks: about 70,000 for 1,000 partitions,
    not 1,000,000).
    """
    import math
    import operator

    from shardflow.tasks.prepare import concat_keyed, gather_shuffled, keyed_rows, split_keyed

    n = len(parts)
    stages = 1 if n <= max_branch else math.ceil(math.log(n) / math.log(max_branch))
    base = n if stages == 1 else math.ceil(n ** (1 / stages))
    width = base**stages
    keys, split, take, concat, combine = (
        task_names(f"{name}-{step}", token) for step in ("keys", "split", "take", "concat", "combine")
    )
    keyed = [dask.delayed(keyed_rows, pure=True)(p, seed, dask_key_name=keys(i)) for i, p in enumerate(parts)]
    # Positions beyond N start empty: no rows of the first partition (its columns kept).
    empty = dask.delayed(concat_keyed, pure=True)(keyed[0], rows=0, dask_key_name=concat(-1)) if width > n else None
    current = keyed + [empty] * (width - n)
    for stage in range(stages):
        step = base**stage
        pieces = [
            dask.delayed(split_keyed, pure=True)(c, n, base, stage, dask_key_name=split(stage, i))
            for i, c in enumerate(current)
        ]
        following = []
        for i in range(width):
            digit = (i // step) % base
            sources = [i + (d - digit) * step for d in range(base)]  # i's group: the same other digits
            taken = [
                dask.delayed(operator.getitem, pure=True)(pieces[src], digit, dask_key_name=take(stage, src, digit))
                for src in sources
            ]
            following.append(dask.delayed(concat_keyed, pure=True)(*taken, dask_key_name=concat(stage, i)))
        current = following
    return [dask.delayed(gather_shuffled, pure=True)(parts[j], current[j], dask_key_name=combine(j)) for j in range(n)]
