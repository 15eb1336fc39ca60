"""shardflow: distributed ETL-plus-training pipelines on Dask.

The public functions are importable from here; each lives in the layer that owns it
and is imported on first use, so ``import shardflow`` stays cheap (no torch, no cuDF).

Examples
--------
>>> import shardflow
>>> config = shardflow.load_config("job.yaml")  # doctest: +SKIP
>>> result = shardflow.run(config)  # doctest: +SKIP
>>> print(result.table)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "load_config": "shardflow.pipelines.setup.config",
    "Config": "shardflow.pipelines.setup.config",
    "start_cluster": ("shardflow.cluster.factory", "start"),
    "connect": "shardflow.cluster.factory",
    "generate": "shardflow.pipelines.setup.generate",
    "etl": "shardflow.pipelines.etl.stage",
    "read_features": "shardflow.pipelines.etl.stage",
    "read_source": "shardflow.pipelines.setup.read",
    "plan": "shardflow.pipelines.setup.plan",
    "train": "shardflow.pipelines.job",
    "evaluate_run": "shardflow.pipelines.job",
    "run": "shardflow.pipelines.job",
    "tune": "shardflow.pipelines.tuning.search",
    "predict": "shardflow.pipelines.serving.predict",
    "build_report": "shardflow.pipelines.interface.report",
    "list_runs": "shardflow.pipelines.interface.report",
    "report_sections": "shardflow.pipelines.interface.report",
    "load_model": "shardflow.pipelines.serving.model",
    "TrainedModel": "shardflow.pipelines.serving.model",
    "Estimator": "shardflow.pipelines.interface.estimator",
    "export": "shardflow.pipelines.serving.export",
    "load_exported": "shardflow.tasks.exported",
    "register_family": "shardflow.pipelines.families.registry",
    "ModelFamily": "shardflow.pipelines.families.registry",
    "FamilyResult": "shardflow.pipelines.families.registry",
    "estimator_family": "shardflow.pipelines.families.custom",
    "torch_module_family": "shardflow.pipelines.families.custom",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'shardflow' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)


def __dir__():
    return __all__ + ["__version__"]
