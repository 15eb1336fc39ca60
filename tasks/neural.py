"""A tabular MLP and the pure functions data-parallel training is built from.

Parameters travel as ``dict[str, numpy.ndarray]`` (``state_dict`` order), never as
pickled modules: what crosses the network each round is exactly the model's weights
(or gradients), and what is saved is loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from shardflow.tasks.shards import Shard
from shardflow.tasks.targets import target_kind

Params = dict  # name -> numpy array


@dataclass(frozen=True)
class MLPSpec:
    """Architecture of :class:`TabularMLP`; stored with the weights."""

    n_numeric: int
    cardinalities: tuple
    task: str
    hidden: tuple = (128, 64)
    embedding_dim: int = 16
    dropout: float = 0.0
    #: Outputs per row: 1, or one logit per class (multi-class).
    outputs: int = 1
    #: The network predicts ``(y - target_shift) / target_scale`` (a regression target
    #: standardised with the training split's mean and standard deviation); predictions
    #: are mapped back to the target's units.
    target_shift: float = 0.0
    target_scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MLPSpec:
        return cls(**{**data, "cardinalities": tuple(data["cardinalities"]), "hidden": tuple(data["hidden"])})


@dataclass(frozen=True)
class OptimConfig:
    """How one worker takes steps: optimizer, batch size, precision, accumulation."""

    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int | None = 2048  #: rows per micro-batch per worker; None: the whole shard
    accumulation_steps: int = 1
    bf16: bool = False
    device: str = "cpu"


class TabularMLP(nn.Module):
    """MLP over standardised numerics and embedded categorical codes.

    Input rows are the ETL's ``X``: numeric features first, then categorical codes
    (stored as float32, used as embedding indices; codes beyond the vocabulary, as
    can only appear from corrupt input, map to the "other" code 1).
    """

    def __init__(self, spec: MLPSpec):
        super().__init__()
        self.n_numeric = spec.n_numeric
        self.cardinalities = list(spec.cardinalities)
        dims = [min(spec.embedding_dim, max(2, (c + 1) // 2)) for c in self.cardinalities]
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(self.cardinalities, dims))
        width = spec.n_numeric + sum(dims)
        layers: list[nn.Module] = []
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if spec.dropout:
                layers.append(nn.Dropout(spec.dropout))
            width = h
        layers.append(nn.Linear(width, spec.outputs))
        self.net = nn.Sequential(*layers)
        self.outputs = spec.outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, : self.n_numeric]]
        for i, (embedding, card) in enumerate(zip(self.embeddings, self.cardinalities)):
            codes = x[:, self.n_numeric + i].long()
            codes = torch.where((codes >= 0) & (codes < card), codes, torch.ones_like(codes))
            parts.append(embedding(codes))
        out = self.net(torch.cat(parts, dim=1))
        return out.squeeze(1) if self.outputs == 1 else out


def build(spec: MLPSpec, seed: int) -> TabularMLP:
    torch.manual_seed(seed)
    return TabularMLP(spec)


def get_params(model: nn.Module) -> Params:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_params(model: nn.Module, params: Params) -> None:
    model.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})


def init_params(spec: MLPSpec, seed: int) -> Params:
    return get_params(build(spec, seed))


def _weighted_loss(spec: MLPSpec, out, y, w):
    """Σ w·loss over the rows, on the standardised target (see :class:`MLPSpec`)."""
    target = (y - spec.target_shift) / spec.target_scale if spec.target_scale != 1 or spec.target_shift else y
    return (target_kind(spec.task).loss(out.float(), target) * w).sum()


def network(spec: MLPSpec, params: Params, device: str = "cpu") -> TabularMLP:
    """The MLP of ``spec`` holding ``params``, on ``device``."""
    model = TabularMLP(spec)
    set_params(model, params)
    return model.to(device)


def make_optimizer(model, cfg: OptimConfig, lr: float):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.mlp.optimizer: {cfg.optimizer!r} is not one of sgd, adam")


def load_optimizer_state(opt, state: dict | None, lr: float) -> None:
    if state:
        opt.load_state_dict(
            {
                "state": {
                    k: {n: (torch.as_tensor(t) if isinstance(t, np.ndarray) else t) for n, t in v.items()}
                    for k, v in state["state"].items()
                },
                "param_groups": state["param_groups"],
            }
        )
    for group in opt.param_groups:
        group["lr"] = lr


def forward_loss(model, x, y, w, *, spec: MLPSpec, bf16: bool, device: str):
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    return _weighted_loss(spec, out, y, w)


def _batch(shard: Shard, idx, device: str):
    """Rows ``idx`` of the shard's training arrays as tensors: features, target, weights."""
    x = torch.from_numpy(shard.x_train[idx]).to(device)
    y = torch.from_numpy(shard.y_train[idx]).to(device)
    w = torch.from_numpy(np.ascontiguousarray(shard.batch_weights(idx), dtype=np.float32)).to(device)
    return x, y, w


def loss_on(shard: Shard, params: Params, spec: MLPSpec, device: str = "cpu", split: str = "valid") -> dict:
    """Weighted loss sum, rows and weight of ``params`` on this shard's validation (or training) rows."""
    return loss_of(network(spec, params, device), shard, spec, device, split)


def loss_of(model: nn.Module, shard: Shard, spec: MLPSpec, device: str = "cpu", split: str = "valid") -> dict:
    """Weighted loss sum, rows and weight of ``model`` on this shard's validation (or training) rows."""
    x, y, w = (
        (shard.x_valid, shard.y_valid, shard.weights_valid)
        if split == "valid"
        else (shard.x_train, shard.y_train, shard.weights_train)
    )
    if len(y) == 0:
        return {"loss_sum": 0.0, "rows": 0, "weight": 0.0}
    training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(y), 65536):
            xb = torch.from_numpy(x[start : start + 65536]).to(device)
            yb = torch.from_numpy(y[start : start + 65536]).to(device)
            wb = torch.from_numpy(np.ascontiguousarray(w[start : start + 65536], dtype=np.float32)).to(device)
            total += float(_weighted_loss(spec, model(xb), yb, wb))
    model.train(training)
    return {"loss_sum": total, "rows": len(y), "weight": float(np.sum(w, dtype=np.float64))}


def predict(params: Params, spec: MLPSpec, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Predictions for rows ``x``: probabilities (one column per class for a multi-class
    target) or values in the target's units (regression)."""
    if len(x) == 0:
        return np.zeros((0, spec.outputs) if spec.outputs > 1 else 0, np.float64)
    model = network(spec, params, device).eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), 65536):
            out = model(torch.from_numpy(np.ascontiguousarray(x[start : start + 65536], np.float32)).to(device))
            outs.append(target_kind(spec.task).activation(out).double().cpu().numpy())
    return np.concatenate(outs) * spec.target_scale + spec.target_shift


def lr_at(schedule: str, base_lr: float, progress: float, warmup: float = 0.0) -> float:
    """Learning rate at ``progress`` (0 → 1 over training): constant, cosine or step decay.

    Examples
    --------
    >>> [round(lr_at("cosine", 0.1, t), 4) for t in (0.0, 0.5, 1.0)]
    [0.1, 0.05, 0.0]
    >>> lr_at("constant", 0.1, 0.7)
    0.1
    """
    if warmup and progress < warmup:
        return base_lr * max(progress / warmup, 0.05)
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return base_lr * (0.1 ** int(min(progress, 0.999) * 3))
    raise ValueError(f"train.mlp.lr_schedule: {schedule!r} is not one of constant, cosine, step")


#: Optimizer steps between two evaluations of the validation loss, at least: an epoch shorter
#: than this is evaluated with the next ones (a small table's epoch of a few steps would
#: otherwise pay a validation pass, and for the data-parallel MLP a round trip, every few steps).
MIN_STEPS_PER_EVALUATION = 50


def planned_epochs(epochs: int | None, max_steps: int, steps_per_epoch: int) -> int:
    """Epochs to train: ``epochs`` when set, else enough for ``max_steps`` optimizer steps,
    but at least one (every row is seen once even when one epoch exceeds the budget).

    Examples
    --------
    >>> planned_epochs(None, 1000, 40), planned_epochs(None, 1000, 300), planned_epochs(None, 1000, 50_000)
    (25, 4, 1)
    >>> planned_epochs(6, 1000, 40)
    6
    """
    if epochs is not None:
        return int(epochs)
    return max(1, math.ceil(max_steps / max(1, steps_per_epoch)))


def epochs_per_evaluation(steps_per_epoch: int) -> int:
    """Epochs between two evaluations: one, or as many as make :data:`MIN_STEPS_PER_EVALUATION` steps.

    Examples
    --------
    >>> epochs_per_evaluation(200), epochs_per_evaluation(20), epochs_per_evaluation(1)
    (1, 3, 50)
    """
    return max(1, math.ceil(MIN_STEPS_PER_EVALUATION / max(1, steps_per_epoch)))


def train_local(
    x_train,
    y_train,
    x_valid,
    y_valid,
    *,
    spec: MLPSpec,
    cfg: OptimConfig,
    epochs: int | None,
    seed: int,
    schedule: str = "constant",
    warmup: float = 0.0,
    w_train=None,
    w_valid=None,
    max_steps: int = 1000,
    patience: int | None = None,
    stop=None,
) -> dict:
    """Train one MLP on one partition's rows (the per-partition models, a tuning trial): no
    communication.

    ``epochs`` (None: :func:`planned_epochs` of ``max_steps``) epochs of ``batch_size``-row
    steps, the learning rate following ``schedule`` step by step (after ``warmup``, the share
    of the steps it rises over, as :func:`lr_at` says). The validation loss is
    evaluated every :func:`epochs_per_evaluation` epochs (when there are validation rows);
    training stops after ``patience`` evaluations without improvement (None: never), or when
    ``stop(evaluation, validation_loss)`` says so (a tuning trial's pruner), and returns the
    best parameters (``stopped``: the evaluation ``stop`` ended it at, or None).
    """
    started = time.perf_counter()
    shard = Shard(x_train, y_train, x_valid, y_valid, seed=seed, w_train=w_train, w_valid=w_valid)
    steps_per_epoch = max(1, math.ceil(shard.rows / ((cfg.batch_size or shard.rows) * cfg.accumulation_steps)))
    epochs = planned_epochs(epochs, max_steps, steps_per_epoch)
    every = epochs_per_evaluation(steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    model = network(spec, init_params(spec, seed), cfg.device).train()
    opt = make_optimizer(model, cfg, cfg.lr)
    best, best_loss, bad = get_params(model), math.inf, 0
    history = {"train_loss": [], "validation_loss": [], "epoch": []}
    loss_sum, seen = 0.0, 0.0
    stopped = None
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(schedule, cfg.lr, (epoch * steps_per_epoch + step) / total_steps, warmup)
            opt.zero_grad(set_to_none=True)
            batches = [
                shard.batch(epoch, step * cfg.accumulation_steps + a, cfg.batch_size)
                for a in range(cfg.accumulation_steps)
            ]
            total = float(sum(shard.batch_weights(b).sum(dtype=np.float64) for b in batches)) or 1.0
            for idx in batches:
                x, y, w = _batch(shard, idx, cfg.device)
                loss = forward_loss(model, x, y, w, spec=spec, bf16=cfg.bf16, device=cfg.device)
                (loss / total).backward()
                loss_sum += float(loss.detach())
            opt.step()
            seen += total
        if (epoch + 1) % every and epoch + 1 < epochs:
            continue
        history["train_loss"].append(loss_sum / (seen or 1.0))
        history["epoch"].append(epoch + 1)
        loss_sum, seen = 0.0, 0.0
        valid = loss_of(model, shard, spec, cfg.device)
        if not valid["weight"]:
            best = get_params(model)  # nothing to choose by: the last parameters
            continue
        history["validation_loss"].append(valid["loss_sum"] / valid["weight"])
        if history["validation_loss"][-1] < best_loss:
            best, best_loss, bad = get_params(model), history["validation_loss"][-1], 0
        else:
            bad += 1
            if patience is not None and bad >= patience:
                break
        if stop is not None and stop(len(history["validation_loss"]) - 1, history["validation_loss"][-1]):
            stopped = len(history["validation_loss"]) - 1
            break
    return {
        "stopped": stopped,
        "params": best,
        "rows": shard.rows,
        "weight": shard.weight,
        "seconds": time.perf_counter() - started,
        "history": history,
    }
