"""The MLP families' network and optimizer, from the run's features and ``train.mlp``.

Both MLP families build their model the same way: the data-parallel MLP
(:mod:`shardflow.pipelines.training.mlp`) and the per-partition MLP ensemble
(:mod:`shardflow.pipelines.training.partitions`) turn the fitted preprocessor and the
``train.mlp`` section into a :class:`~shardflow.tasks.neural.MLPSpec` (inputs, layers,
outputs, the target's standardisation) and an :class:`~shardflow.tasks.neural.OptimConfig`
(optimizer, batches, precision, device). Torch is imported only when they are built.
"""

from __future__ import annotations

from shardflow.pipelines.setup.train_config import MLPConfig
from shardflow.tasks.encode import Preprocessor


def mlp_spec_for(preprocessor: Preprocessor, cfg: MLPConfig):
    """The MLP for the run's features and target: one output per class for a multi-class
    target, and a regression target standardised with the training split's statistics.

    Parameters
    ----------
    preprocessor : Preprocessor
        The ETL's fitted preprocessing (feature columns, cardinalities, target).
    cfg : MLPConfig
        The ``train.mlp`` section.

    Returns
    -------
    MLPSpec
        The network's architecture.
    """
    from shardflow.tasks.neural import MLPSpec
    from shardflow.tasks.targets import target_kind

    return MLPSpec(
        n_numeric=len(preprocessor.numeric),
        cardinalities=tuple(preprocessor.cardinalities[c] for c in preprocessor.categorical),
        task=preprocessor.task,
        hidden=tuple(cfg.hidden),
        embedding_dim=cfg.embedding_dim,
        dropout=cfg.dropout,
        outputs=target_kind(preprocessor.task).outputs(len(preprocessor.classes)),
        target_shift=preprocessor.target_shift,
        target_scale=preprocessor.target_scale,
    )


def mlp_optim_for(cfg: MLPConfig, backend: str):
    """The optimizer's settings of ``train.mlp``; ``device: auto`` trains on the GPU when
    the cluster's backend is cuDF.

    Parameters
    ----------
    cfg : MLPConfig
        The ``train.mlp`` section.
    backend : str
        The cluster's dataframe backend (``pandas`` or ``cudf``).

    Returns
    -------
    OptimConfig
        What every rank's optimizer is built from.
    """
    from shardflow.tasks.neural import OptimConfig

    device = cfg.device if cfg.device != "auto" else ("cuda" if backend == "cudf" else "cpu")
    return OptimConfig(
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        accumulation_steps=cfg.accumulation_steps,
        bf16=cfg.bf16,
        device=device,
    )
