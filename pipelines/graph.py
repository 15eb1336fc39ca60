"""Small graph-building helpers shared by the pipelines."""

from __future__ import annotations

import dask
from dask.base import tokenize


def task_names(stage: str, *token_parts) -> callable:
    """A function giving dashboard-friendly keys ``(f"{stage}-{token}", i)``.

    The key prefix (``etl-profile``, ``train-xgboost``) is what the dashboard's task
    stream and progress bars show, so it says which stage and operation runs.
    """
    token = tokenize(*token_parts)[:8]

    def name(i):
        return (f"{stage}-{token}", i)

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
        futures = [client.submit(_combine_all, combine, *futures[i:i + split_every],
                                 key=f"{name}-L{level}-{i // split_every}", pure=False)
                   for i in range(0, len(futures), split_every)]
        level += 1
    return futures[0]


def _combine_all(combine, first, *rest):
    out = first
    for item in rest:
        out = combine(out, item)
    return out


def shuffled_partitions(parts: list, *, seed: int, name: str, token) -> list:
    """The prepared partitions with their rows redistributed at random (seeded, deterministic).

    A task-based all-to-all shuffle, as Dask's ``tasks`` shuffle method does it, with every
    task named for the dashboard (``{name}-split``, ``-take``, ``-combine``): each partition
    is cut by a uniform hash key into ``N`` ranges, range ``j`` of every partition goes to
    partition ``j``, sorted by key. The rows' global order is thus the same whatever ``N``;
    each partition keeps its own quarantined rows and counts. ``N²`` small tasks: fine for
    the hundreds of partitions a job has, not for hundreds of thousands.
    """
    import operator

    from shardflow.tasks.prepare import gather_shuffled, split_by_shuffle_key

    n = len(parts)
    split, take, combine = (task_names(f"{name}-{step}", token) for step in ("split", "take", "combine"))
    pieces = [dask.delayed(split_by_shuffle_key, pure=True)(p, seed, n, dask_key_name=split(i))
              for i, p in enumerate(parts)]
    return [dask.delayed(gather_shuffled, pure=True)(
        parts[j], *[dask.delayed(operator.getitem, pure=True)(pieces[i], j, dask_key_name=take(i * n + j))
                    for i in range(n)], dask_key_name=combine(j)) for j in range(n)]
