"""Numbers a config may hold: finite, and within 64 bits (what NumPy, pandas, XGBoost and torch take)."""

from __future__ import annotations

import collections
import math

#: The largest integer a config holds: NumPy, pandas, XGBoost and torch take 64-bit integers,
#: and a larger one fails deep inside them.
MAX_INTEGER = 2**63 - 1


def number_problem(value) -> str | None:
    """What is wrong with the numbers in ``value`` (itself, or nested in its lists and
    mappings): NaN or an infinity (YAML's ``.nan``, ``.inf``, which pass every range
    check), or an integer past 64 bits; None when nothing is.

    Examples
    --------
    >>> number_problem(float("nan"))
    'must be a finite number, got nan'
    >>> number_problem({"fare": [0, float("inf")]})
    "holds inf (at ['fare'][1]); write finite numbers (null for none)"
    >>> number_problem(10**20)
    'must be at most 9,223,372,036,854,775,807 (64 bits), got 100000000000000000000'
    >>> number_problem({"a": [1, "x", 2.5]}) is None
    True
    """
    queue = collections.deque([("", value)])
    while queue:  # breadth first, in order: the first bad number is the one named
        where, item = queue.popleft()
        if isinstance(item, dict):
            queue.extend((f"{where}[{k!r}]", v) for k, v in item.items())
        elif isinstance(item, list):
            queue.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            return (
                f"holds {item!r} (at {where}); write finite numbers (null for none)"
                if where
                else f"must be a finite number, got {item!r}"
            )
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INTEGER:
            bound = f"at most {MAX_INTEGER:,} (64 bits)"
            return (
                f"holds {item!r} (at {where}); numbers must be {bound}" if where else f"must be {bound}, got {item!r}"
            )
    return None
