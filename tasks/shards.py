"""Training data of one partition (or one worker), read from the ETL's Zarr arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Shard:
    """One worker's rows: training and validation arrays (float32), with sample weights
    (``None``: every row weighs 1)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    seed: int = 0
    orders: dict = field(default_factory=dict)
    w_train: np.ndarray | None = None
    w_valid: np.ndarray | None = None

    @property
    def weights_train(self) -> np.ndarray:
        """Sample weights of the training rows (ones when the job has none)."""
        return self.w_train if self.w_train is not None else np.ones(len(self.y_train), np.float32)

    def batch_weights(self, idx: np.ndarray) -> np.ndarray:
        """Sample weights of training rows ``idx`` (no full-length array of ones when unweighted)."""
        return self.w_train[idx] if self.w_train is not None else np.ones(len(idx), np.float32)

    @property
    def weights_valid(self) -> np.ndarray:
        return self.w_valid if self.w_valid is not None else np.ones(len(self.y_valid), np.float32)

    @property
    def weight(self) -> float:
        """Total training weight: what this shard counts for in weighted averages."""
        return float(self.w_train.sum(dtype=np.float64)) if self.w_train is not None else float(self.rows)

    @property
    def rows(self) -> int:
        return len(self.y_train)

    def batch(self, epoch: int, index: int, size: int | None) -> np.ndarray:
        """Row indices of micro-batch ``index`` of ``epoch`` (a fresh shuffle per epoch).

        Examples
        --------
        >>> import numpy as np
        >>> shard = Shard(np.zeros((5, 1)), np.arange(5.0), np.zeros((0, 1)), np.zeros(0), seed=1)
        >>> sorted(np.concatenate([shard.batch(0, i, 2) for i in range(3)])[:5].tolist())
        [0, 1, 2, 3, 4]
        >>> shard.batch(0, 0, None).tolist()
        [0, 1, 2, 3, 4]
        """
        n = self.rows
        if size is None or size >= n:
            return np.arange(n)
        if epoch not in self.orders:
            self.orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n)}
        start = (index * size) % n
        idx = np.arange(start, start + size) % n
        return self.orders[epoch][idx]


def read_shard(zarr_path, offset: int, rows: int, seed: int) -> Shard:
    """Rows ``[offset, offset + rows)`` of ``X``/``y``/``w``/``is_validation`` as a :class:`Shard`
    (``zarr_path`` local, or a :class:`~shardflow.core.storage.StorePath`)."""
    import zarr

    from shardflow.core.storage import zarr_store

    group = zarr.open_group(zarr_store(zarr_path, read_only=True), mode="r")
    x = group["X"][offset : offset + rows]
    y = group["y"][offset : offset + rows]
    valid = group["is_validation"][offset : offset + rows]
    w = group["w"][offset : offset + rows] if "w" in group else None
    return Shard(
        x[~valid],
        y[~valid],
        x[valid],
        y[valid],
        seed=seed,
        w_train=None if w is None else w[~valid],
        w_valid=None if w is None else w[valid],
    )


def merge_shards(*shards: Shard, seed: int = 0) -> Shard:
    """One shard holding the rows of several, in order.

    Examples
    --------
    >>> import numpy as np
    >>> a = Shard(np.ones((2, 1)), np.array([0.0, 1.0]), np.ones((1, 1)), np.array([1.0]))
    >>> b = Shard(np.zeros((1, 1)), np.array([1.0]), np.zeros((0, 1)), np.zeros(0))
    >>> merged = merge_shards(a, b)
    >>> merged.y_train.tolist(), merged.y_valid.tolist()
    ([0.0, 1.0, 1.0], [1.0])
    """
    if len(shards) == 1:
        s = shards[0]
        return Shard(s.x_train, s.y_train, s.x_valid, s.y_valid, seed=seed, w_train=s.w_train, w_valid=s.w_valid)
    weighted = any(s.w_train is not None or s.w_valid is not None for s in shards)
    return Shard(
        np.concatenate([s.x_train for s in shards]),
        np.concatenate([s.y_train for s in shards]),
        np.concatenate([s.x_valid for s in shards]),
        np.concatenate([s.y_valid for s in shards]),
        seed=seed,
        w_train=np.concatenate([s.weights_train for s in shards]) if weighted else None,
        w_valid=np.concatenate([s.weights_valid for s in shards]) if weighted else None,
    )


def shard_sizes(shard: Shard) -> tuple:
    """Training rows, validation rows and training weight of a shard."""
    return len(shard.y_train), len(shard.y_valid), shard.weight


def shard_field(shard: Shard, name: str) -> np.ndarray:
    return getattr(shard, name)
