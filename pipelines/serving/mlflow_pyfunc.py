"""A shardflow model as an MLflow python function (``mlflow.pyfunc``), logged from code.

MLflow's "models from code": this file is copied into the logged model and run when the
model is loaded, so nothing is pickled. The model's artifacts hold a copy of the run's
scoring files (:func:`~shardflow.pipelines.records.trained_models.copy_scoring_files`);
``load_context`` opens them with :func:`~shardflow.pipelines.serving.model.load_model`
(every file checked against the copied manifest), and ``predict`` scores raw input rows,
the columns ``shardflow predict`` reads, as :meth:`TrainedModel.predict` does::

    model = mlflow.pyfunc.load_model("models:/m-...")
    model.predict(raw_rows)  # a pandas DataFrame with the run's input columns

Loading needs shardflow installed where the model is loaded.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from shardflow.pipelines.interface.tracking import PYFUNC_MODEL_FILE as MODEL_FILE
from shardflow.pipelines.interface.tracking import PYFUNC_RUN_ARTIFACT as RUN_ARTIFACT


class ShardflowModel(PythonModel):
    """One model family of a shardflow run, scoring raw rows (see the module's docstring)."""

    def load_context(self, context) -> None:
        from pathlib import Path

        from shardflow.pipelines.serving.model import load_model

        run = Path(context.artifacts[RUN_ARTIFACT])
        self.model = load_model(run, (run / MODEL_FILE).read_text().strip())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict(model_input)


mlflow.models.set_model(ShardflowModel())
