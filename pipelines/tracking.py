"""Experiment tracking: a run's config, metrics, report and models logged to MLflow (optional).

``tracking: {mlflow: {tracking_uri: http://..., experiment: trips}}`` in a config logs each
shardflow run to one MLflow run (see :func:`log_run`). MLflow is an optional extra
(``pip install shardflow[tracking]``); it is imported only when a config asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.pipelines.typed_yaml import Section, Text, option


@dataclass
class MLflowConfig:
    """``tracking.mlflow:`` the MLflow tracking server and experiment a run is logged to."""

    tracking_uri: str | None = option(None, check=Text("an MLflow tracking URI (http://host:5000, sqlite:///...)"))
    experiment: str = option("shardflow", check=Text("an experiment name", nonempty=True))


@dataclass
class TrackingConfig:
    """``tracking:`` where runs are logged besides their run directory (none by default)."""

    mlflow: MLflowConfig | None = option(None, check=Section())
