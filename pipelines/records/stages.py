"""Stage keys: what each stage's output was computed from.

The ETL's key covers the input files' fingerprint, the config sections it reads and
the code version; training's covers the ETL key and the ``train`` section; evaluation's
covers the training key. A stage whose recorded key equals the current one is not
recomputed.

The code version hashes what the code *does*: each file's syntax tree without its
docstrings (comments and formatting are not in the tree), so editing documentation,
reformatting or retitling a figure (presentation code is in no stage) reuses every stage,
while changing a default or an algorithm recomputes the stages it decides.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

from dask.base import tokenize

from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.setup.config import Config

#: The source files (relative to the installed ``shardflow`` package) whose code decides
#: each stage's output. A stage's key covers its own files and its inputs' stages', so
#: editing the report, the CLI or the README never invalidates a completed stage.
STAGE_CODE = {
    RunDir.ETL: (
        "core/backend.py",
        "tasks/encode.py",
        "core/errors.py",
        "tasks/expressions.py",
        "tasks/io.py",
        "tasks/prepare.py",
        "tasks/schema.py",
        "tasks/stats.py",
        "tasks/drift.py",
        "pipelines/setup/config.py",
        "pipelines/etl/stage.py",
        "pipelines/etl/summary.py",
        "pipelines/graph.py",
        "pipelines/etl/outputs.py",
        "pipelines/setup/paths.py",
        "pipelines/setup/plan.py",
        "pipelines/setup/source.py",
        "pipelines/setup/read.py",
        "pipelines/setup/dimensions.py",
        "core/storage.py",
        "core/storage_options.py",
        "tasks/keys.py",
        "tasks/expression_kinds.py",
        "core/constraints.py",
        "core/numbers.py",
        "tasks/targets.py",
        "tasks/labels.py",
        "tasks/combiners.py",
        "pipelines/etl/target_fit.py",
        "pipelines/records/rundir.py",  # names the stage files every stage writes and reads
        "pipelines/records/manifest.py",  # what the manifest and the ETL summary hold
    ),
    RunDir.TRAIN: (
        "tasks/metrics.py",
        "tasks/metric_sums.py",
        "tasks/mlp_steps.py",
        "tasks/worker_state.py",
        "tasks/models.py",
        "tasks/neural.py",
        "tasks/shards.py",
        "tasks/process_group.py",
        "tasks/groups.py",
        "tasks/linear.py",
        "pipelines/families/registry.py",
        "pipelines/families/specs.py",
        "pipelines/families/custom.py",
        "tasks/custom_models.py",
        "pipelines/job.py",
        "pipelines/records/artifacts.py",
        "pipelines/records/trained_models.py",
        "pipelines/setup/train_config.py",
        "pipelines/training/*.py",
        "pipelines/tuning/*.py",  # the tuned parameters count in the key too (train.xgboost.params)
        "tasks/tuning.py",
    ),
    RunDir.EVALUATE: (
        "tasks/evaluation.py",
        "pipelines/evaluation/evaluate.py",
        "tasks/explain.py",
        "pipelines/evaluation/explanations.py",
    ),
}
#: Code that changes how a run looks or where it runs, never what it computes.
COSMETIC_CODE = (
    "pipelines/interface/cli.py",
    "pipelines/interface/cli_tune.py",
    "pipelines/interface/commands.py",
    "pipelines/interface/console.py",
    "pipelines/interface/figures.py",
    "pipelines/interface/progress.py",
    "pipelines/interface/report.py",
    "pipelines/interface/report_html.py",
    "pipelines/interface/report_quality.py",
    "pipelines/interface/report_*.py",  # the report's sections, formats and curves
    "pipelines/interface/family_views.py",
    "pipelines/records/ownership.py",
    "pipelines/records/stages.py",
    "pipelines/setup/generate.py",
    "pipelines/serving/predict.py",
    "pipelines/serving/drift.py",
    "pipelines/serving/model.py",
    "tasks/scoring.py",
    "pipelines/serving/export.py",
    "pipelines/serving/export_inputs.py",
    "tasks/exported.py",
    "tasks/onnx_graph.py",
    "tasks/onnx_inputs.py",
    "tasks/onnx_trees.py",
    "core/threads.py",
    "pipelines/interface/tracking.py",
    "pipelines/interface/tracking_tuning.py",
    "pipelines/setup/tracking_config.py",
    "pipelines/interface/estimator.py",
    "pipelines/interface/notebook_html.py",
    "pipelines/serving/mlflow_pyfunc.py",
    "pipelines/interface/hyperparameters.py",
    "cluster/*.py",
    "data/*.py",
    "*/__init__.py",
    "pipelines/*/__init__.py",
    "pipelines/training/__init__.py",
)


def package_roots() -> dict:
    """``{layer: directory}`` of the installed layers (tasks/, pipelines/, cluster/, data/)."""
    import shardflow.cluster
    import shardflow.core
    import shardflow.data
    import shardflow.pipelines
    import shardflow.tasks

    return {
        name: Path(pkg.__file__).resolve().parent
        for name, pkg in (
            ("tasks", shardflow.tasks),
            ("pipelines", shardflow.pipelines),
            ("cluster", shardflow.cluster),
            ("data", shardflow.data),
            ("core", shardflow.core),
        )
    }


def stage_files(patterns, roots: dict | None = None) -> list:
    """The files of ``patterns`` (paths of the repository layout: tasks/, pipelines/, ...)
    under ``roots`` (default: :func:`package_roots`)."""
    roots = {layer: Path(directory) for layer, directory in (roots or package_roots()).items()}
    found = []
    for pattern in patterns:
        top, _, rest = pattern.partition("/")
        bases = roots.values() if top == "*" else [roots[top]]
        for base in bases:
            found.extend(sorted(base.glob(rest)))
    return found


def code_meaning(source: str) -> str:
    r"""What a module's code does, as text: its syntax tree without docstrings.

    Comments, formatting and docstrings (of the module, classes and functions) do not
    change it; any change to what runs does, constants included.

    Examples
    --------
    >>> before = 'def f(x=1):\n    "Add one."\n    return x + 1  # plus one\n'
    >>> code_meaning(before) == code_meaning('def f(x = 1):\n    "Adds one (doc)."\n    return x + 1\n')
    True
    >>> code_meaning(before) == code_meaning('def f(x=2):\n    "Add one."\n    return x + 1\n')
    False
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and is_docstring(
            node.body[0] if node.body else None
        ):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def is_docstring(statement) -> bool:
    """Whether ``statement`` is a string literal standing alone (a docstring where it comes first)."""
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


@cache
def code_version(stage: str) -> str:
    """Hash of the installed code that decides ``stage``'s output (see :data:`STAGE_CODE`):
    :func:`hash_code` of the package, once per process."""
    return hash_code(stage)


def hash_code(stage: str, roots: dict | None = None) -> str:
    """Hash of the code that decides ``stage``'s output: :func:`code_meaning` of each of its
    files (:data:`STAGE_CODE`), so documentation and formatting do not count.

    ``roots``: ``{layer: directory}`` of another copy of the layers (default: the installed
    package).
    """
    digest = hashlib.sha256()
    for path in stage_files(STAGE_CODE[stage], roots):
        digest.update(path.name.encode())
        digest.update(code_meaning(path.read_text(encoding="utf-8")).encode())
    return digest.hexdigest()[:16]


def stage_keys(config: Config, plan=None) -> dict:
    """The key of each stage's output for ``config`` (see the module docstring).

    ``plan`` is the job's :class:`~shardflow.pipelines.setup.source.InputPlan` when the caller
    has it (its footers are not read again).
    """
    from shardflow.pipelines.setup.plan import InputPlan, shuffles
    from shardflow.pipelines.setup.source import file_fingerprint

    plan = plan or InputPlan(config)
    source = plan.source
    dims = plan.dimension_paths()
    data = config.to_dict()
    etl_config = {k: data[k] for k in ("input", "joins", "target", "features", "clean", "encode", "split")}
    etl_config["input"] = {k: v for k, v in data["input"].items() if k != "persist"}  # how, not what
    etl_config["output"] = {k: data["output"][k] for k in ("keep_columns", "zarr_chunk_rows")}
    etl_config["shuffle"] = shuffles(config)  # the models decide whether the ETL shuffles
    etl = tokenize(
        source.fingerprint,
        file_fingerprint(dims, config.storage_options) if dims else "",
        etl_config,
        code_version(RunDir.ETL),
    )
    from shardflow.pipelines.families.registry import FAMILIES

    # A family registered from Python is not in the code version: its estimator's description is.
    registered = [getattr(FAMILIES[m], "fingerprint", "") for m in config.train.models]
    # How the parameters were searched (train.tune) trains nothing itself: a tuned job's
    # parameters are in train.xgboost.params, which count.
    # Nor does whether families overlap (train.overlap): each family's model is the same.
    section = {k: v for k, v in data["train"].items() if k not in ("tune", "overlap")}
    train = tokenize(etl, section, code_version(RunDir.TRAIN), registered)
    return {RunDir.ETL: etl[:16], RunDir.TRAIN: train[:16], RunDir.EVALUATE: evaluate_key(train[:16])}


def evaluate_key(train_key: str) -> str:
    """The evaluation's key, from the key of the training it evaluates."""
    return tokenize(train_key, code_version(RunDir.EVALUATE))[:16]
