"""Baseline: the same MLP trained in one process with a plain PyTorch loop."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from shardflow.tasks.neural import MLPSpec, TabularMLP


def train(
    x_train,
    y_train,
    x_valid,
    y_valid,
    spec: MLPSpec,
    epochs: int,
    batch_size: int,
    lr: float,
    threads: int,
    seed: int = 0,
) -> dict:
    """Adam with a cosine schedule, like shardflow's default; returns loss and samples/s."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = TabularMLP(spec)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = math.ceil(len(y) / batch_size)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(y)))
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps + step) / (epochs * steps)))
            idx = order[step * batch_size : (step + 1) * batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        valid_loss = float(loss_fn(model(torch.from_numpy(x_valid)), torch.from_numpy(y_valid)))
    return {"seconds": seconds, "samples_per_second": epochs * len(y) / seconds, "validation_loss": valid_loss}
