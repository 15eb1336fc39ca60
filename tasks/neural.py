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

from shardflow.tasks.targets import target_kind
from shardflow.tasks.shards import Shard

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
    def from_dict(cls, data: dict) -> "MLPSpec":
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


def _optimizer_state(opt) -> dict:
    """The optimizer's state as plain arrays (momenta, Adam moments, step counts)."""
    state = opt.state_dict()
    return {
        "state": {k: {n: (t.detach().cpu().numpy().copy() if torch.is_tensor(t) else t) for n, t in v.items()}
                  for k, v in state["state"].items()},
        "param_groups": state["param_groups"],
    }


def load_optimizer_state(opt, state: dict | None, lr: float) -> None:
    if state:
        opt.load_state_dict({
            "state": {k: {n: (torch.as_tensor(t) if isinstance(t, np.ndarray) else t) for n, t in v.items()}
                      for k, v in state["state"].items()},
            "param_groups": state["param_groups"],
        })
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


def local_steps(shard: Shard, params: Params, spec: MLPSpec, cfg: OptimConfig, *, epoch: int,
                first_step: int, steps: int, lr: float, optimizer_state: dict | None = None) -> dict:
    """Take ``steps`` optimizer steps on this worker's shard from ``params`` (local SGD).

    Each step averages the loss over ``accumulation_steps`` micro-batches of
    ``batch_size`` rows (weighted by the sample weights). Returns the new parameters,
    the optimizer state (it stays on the worker), the weight this worker counts for in
    the average (its training weight), the loss sum and the weight it was taken over.
    """
    device = cfg.device
    model = network(spec, params, device).train()
    opt = make_optimizer(model, cfg, lr)
    load_optimizer_state(opt, optimizer_state, lr)
    loss_sum, seen = 0.0, 0.0
    for step in range(first_step, first_step + steps):
        opt.zero_grad(set_to_none=True)
        batches = [shard.batch(epoch, step * cfg.accumulation_steps + a, cfg.batch_size)
                   for a in range(cfg.accumulation_steps)]
        total = float(sum(shard.batch_weights(b).sum(dtype=np.float64) for b in batches)) or 1.0
        for idx in batches:
            x, y, w = _batch(shard, idx, device)
            loss = forward_loss(model, x, y, w, spec=spec, bf16=cfg.bf16, device=device)
            (loss / total).backward()
            loss_sum += float(loss.detach())
        opt.step()
        seen += total
    return {"params": get_params(model), "optimizer_state": _optimizer_state(opt),
            "weight": shard.weight, "loss_sum": loss_sum, "seen": seen}


def loss_on(shard: Shard, params: Params, spec: MLPSpec, device: str = "cpu", split: str = "valid") -> dict:
    """Weighted loss sum, rows and weight of ``params`` on this shard's validation (or training) rows."""
    return loss_of(network(spec, params, device), shard, spec, device, split)


def loss_of(model: nn.Module, shard: Shard, spec: MLPSpec, device: str = "cpu", split: str = "valid") -> dict:
    """Weighted loss sum, rows and weight of ``model`` on this shard's validation (or training) rows."""
    x, y, w = (shard.x_valid, shard.y_valid, shard.weights_valid) if split == "valid" \
        else (shard.x_train, shard.y_train, shard.weights_train)
    if len(y) == 0:
        return {"loss_sum": 0.0, "rows": 0, "weight": 0.0}
    training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(y), 65536):
            xb = torch.from_numpy(x[start:start + 65536]).to(device)
            yb = torch.from_numpy(y[start:start + 65536]).to(device)
            wb = torch.from_numpy(np.ascontiguousarray(w[start:start + 65536], dtype=np.float32)).to(device)
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
            out = model(torch.from_numpy(np.ascontiguousarray(x[start:start + 65536], np.float32)).to(device))
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


def train_local(x_train, y_train, x_valid, y_valid, *, spec: MLPSpec, cfg: OptimConfig, epochs: int,
                seed: int, schedule: str = "constant", w_train=None, w_valid=None) -> dict:
    """Train one MLP on one partition's rows (the per-partition models): no communication."""
    started = time.perf_counter()
    shard = Shard(x_train, y_train, x_valid, y_valid, seed=seed, w_train=w_train, w_valid=w_valid)
    params = init_params(spec, seed)
    steps_per_epoch = max(1, math.ceil(shard.rows / ((cfg.batch_size or shard.rows) * cfg.accumulation_steps)))
    state = None
    train_loss = []
    for epoch in range(epochs):
        lr = lr_at(schedule, cfg.lr, epoch / max(1, epochs))
        out = local_steps(shard, params, spec, cfg, epoch=epoch, first_step=0, steps=steps_per_epoch, lr=lr,
                          optimizer_state=state)
        params, state = out["params"], out["optimizer_state"]
        train_loss.append(out["loss_sum"] / (out["seen"] or 1.0))
    return {"params": params, "rows": shard.rows, "weight": shard.weight, "seconds": time.perf_counter() - started,
            "history": {"train_loss": train_loss}}
