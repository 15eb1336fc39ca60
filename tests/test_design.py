"""The code's structure, as the design card and the redesign promise it.

These are checks of the source itself: where family names live, which module may
import what, which code decides which stage's output.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "tasks", "cluster", "shardflow", "data")


def modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text())


def docstring_nodes(tree) -> set:
    """``id`` of every docstring constant in ``tree`` (text, not code)."""
    return {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(n)
    }


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return "shardflow" if parts == ("shardflow",) else "shardflow." + ".".join(p for p in parts if p != "shardflow")


def constants_outside(exempt: str, matches) -> list:
    """(file, line, value) of every constant outside docstrings and the ``exempt`` module
    for which ``matches(value)`` holds."""
    found = []
    for path, tree in modules():
        if path.relative_to(ROOT) == Path(exempt):
            continue
        docstrings = docstring_nodes(tree)
        found += [
            (str(path.relative_to(ROOT)), node.lineno, node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and id(node) not in docstrings and matches(node.value)
        ]
    return found


def test_family_names_are_spelled_in_the_registry_only():
    from shardflow.pipelines.families.specs import family_names

    FAMILY_NAMES = family_names()

    # Package names that happen to equal a family's name: not a family switch.
    allowed = {("pipelines/records/manifest.py", "xgboost")}
    found = [
        (str(path.relative_to(ROOT)), node.value, node.lineno)
        for path, tree in modules()
        if path.relative_to(ROOT) not in (Path("pipelines/families/registry.py"), Path("pipelines/families/specs.py"))
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and node.value in FAMILY_NAMES
        and (str(path.relative_to(ROOT)), node.value) not in allowed
    ]
    assert found == []


def test_no_module_imports_another_modules_private_names():
    found = [
        (str(path.relative_to(ROOT)), node.module, alias.name)
        for path, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shardflow")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert found == []


def runtime_imports(tree) -> list:
    """Every import in ``tree``, at module level or inside functions (they run too), but not
    under ``if TYPE_CHECKING:`` (annotations only): ``(node, imported names)``."""
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for inner in ast.walk(child)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.append((node, [a.name for a in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node, [node.module, *(f"{node.module}.{a.name}" for a in node.names)]))
    return found


def bound_modules(tree) -> list:
    """Modules a family binds by name (they are imported when the binding is called):
    ``Deferred("tasks.linear", ...)``, a ``training_module = "mlp"`` class attribute, and the
    registry's ``_view``/``_predictor``/``_exporter`` helpers."""
    helpers = {
        "_view": "pipelines.interface.family_views",
        "_predictor": "tasks.models",
        "_exporter": "tasks.onnx_graph",
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "Deferred" and node.args and isinstance(node.args[0], ast.Constant):
                found.append(f"shardflow.{node.args[0].value}")
            elif node.func.id in helpers:
                found.append(f"shardflow.{helpers[node.func.id]}")
        elif (
            isinstance(node, ast.Assign)
            and [ast.unparse(t) for t in node.targets] == ["training_module"]
            and isinstance(node.value, ast.Constant)
            and node.value.value
        ):
            found.append(f"shardflow.pipelines.training.{node.value.value}")
    return found


def import_graph() -> dict:
    """``{module: shardflow modules it imports}`` over all runtime imports (:func:`runtime_imports`)
    and the modules families bind by name (:func:`bound_modules`); ``from shardflow.tasks import
    metrics`` imports the module ``shardflow.tasks.metrics``."""
    trees = {module_name(path): tree for path, tree in modules()}
    return {
        name: {
            t
            for t in [*(t for _, names in runtime_imports(tree) for t in names), *bound_modules(tree)]
            if t in trees and t != name
        }
        for name, tree in trees.items()
    }


def test_no_import_cycles_counting_imports_inside_functions():
    """No cycle among shardflow's modules, counting the imports inside functions and the
    families' bindings by name: a lazy import defers a module's cost, it does not make two
    modules independent."""
    graph = import_graph()
    assert "shardflow.pipelines.training.mlp" in graph["shardflow.pipelines.families.registry"]
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_layers_import_downwards_only():
    """``core`` imports no other layer; ``tasks`` (what runs on workers) and ``cluster`` (where
    it runs) import neither ``pipelines`` nor each other."""
    graph = import_graph()
    above = {
        "shardflow.core": ("shardflow.tasks", "shardflow.cluster", "shardflow.pipelines"),
        "shardflow.tasks": ("shardflow.cluster", "shardflow.pipelines"),
        "shardflow.cluster": ("shardflow.tasks", "shardflow.pipelines"),
    }
    upward = {
        (name, dep)
        for name, deps in graph.items()
        for layer, forbidden in above.items()
        if name.startswith(layer + ".")
        for dep in deps
        if dep.startswith(forbidden)
    }
    assert upward == set()


@pytest.mark.parametrize("package", ["pipelines", "tasks", "cluster", "shardflow"])
def test_modules_stay_small(package):
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / package).rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 450} == {}


def test_every_module_is_classified_for_stage_keys():
    """Each module either decides a stage's output (its edits recompute that stage) or is
    cosmetic (the report, the CLI: its edits keep every completed stage)."""
    from shardflow.pipelines.records.stages import COSMETIC_CODE, STAGE_CODE, stage_files

    deciding = {p for patterns in STAGE_CODE.values() for p in stage_files(patterns)}
    cosmetic = set(stage_files(COSMETIC_CODE))
    every = {
        p.resolve()
        for package in ("pipelines", "tasks", "cluster", "data", "shardflow/core")
        for p in (ROOT / package).rglob("*.py")
    }
    assert every - deciding - cosmetic == set()
    assert {p.name for p in deciding & cosmetic} <= {"__init__.py"}
    assert not any(p.name in ("report.py", "cli.py", "progress.py") for p in deciding)


def test_stage_keys_follow_what_the_code_does_not_its_documentation(tmp_path):
    """On a copy of the layers: docstrings, comments and formatting of stage code, and any
    edit of presentation code (a figure's title), keep every stage's code version; a
    training default recomputes training, and the ETL only when ETL code changes."""
    import shutil

    from shardflow.pipelines.records.rundir import RunDir
    from shardflow.pipelines.records.stages import STAGE_CODE, hash_code, package_roots, stage_files

    roots = {}
    for layer, directory in package_roots().items():
        shutil.copytree(directory, tmp_path / layer, ignore=shutil.ignore_patterns("__pycache__"))
        roots[layer] = tmp_path / layer
    stages = list(STAGE_CODE)

    def versions():
        return {stage: hash_code(stage, roots) for stage in stages}

    def edit(relative, old, new):
        path = tmp_path / relative
        text = path.read_text()
        assert old in text, (relative, old)
        path.write_text(text.replace(old, new, 1))

    original = versions()
    # Documentation and formatting of code that decides a stage: no stage recomputes.
    edit(
        "pipelines/setup/train_config.py",
        '"""',
        '"""A reworded first line.\n\n    ',
    )
    edit("tasks/encode.py", "\nimport ", "\n# a new comment\n\n\nimport ")
    # Presentation: retitle every figure of the report.
    deciding = {p.resolve() for s in stages for p in stage_files(STAGE_CODE[s], roots)}
    titled = [p for p in (tmp_path / "pipelines").rglob("*.py") if "set_title(" in p.read_text()]
    assert titled and not deciding & {p.resolve() for p in titled}, "figure code must not decide a stage"
    for path in titled:
        path.write_text(path.read_text().replace("set_title(", "set_title('retitled') or (lambda *a, **k: 0)("))
    assert versions() == original
    # A training default: training (and evaluation, keyed by training) recompute, the ETL does not.
    edit("pipelines/setup/train_config.py", "max_steps: int = option(1000,", "max_steps: int = option(2000,")
    changed = versions()
    assert changed[RunDir.ETL] == original[RunDir.ETL] and changed[RunDir.TRAIN] != original[RunDir.TRAIN]


def test_long_signatures_are_keyword_only():
    """More than five parameters: the rest are keyword-only, so call sites say what they pass."""
    found = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if len(positional) > 5:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert found == []


def test_every_config_field_declares_its_constraint():
    import dataclasses
    import typing

    from shardflow.pipelines.setup.config import Config

    missing = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            if "check" not in f.metadata:
                missing.append(prefix + f.name)
            inner = hints[f.name]
            inner = (typing.get_args(inner) or (inner,))[0] if typing.get_origin(inner) is list else inner
            if dataclasses.is_dataclass(inner):
                walk(inner, f"{prefix}{f.name}.")

    walk(Config, "")
    assert missing == []


def test_values_that_would_break_later_are_refused_up_front_all_at_once():
    from shardflow.pipelines.setup.config import ConfigError, load_config

    bad = {
        "train.max_attempts": "0",
        "train.mlp.batch_size": "0",
        "train.mlp.dropout": "1.5",
        "train.mlp.lr": "-1",
        "train.mlp.warmup": "2",
        "input.blocksize": "12XB",
        "input.max_partition_rows": "0",
        "train.partitions.xgboost_rounds": "0",
        "cluster.n_workers": "0",
        "joins": "[{path: z.csv, on: [k], min_match_rate: 2}]",
    }
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"{k}={v}" for k, v in bad.items()])
    message = str(err.value)
    for key in bad:
        assert f"config key '{key if key != 'joins' else 'joins[0].min_match_rate'}'" in message, key
    assert "must be between 0 and 1 (excluding 1), got 1.5" in message and len(message.splitlines()) == 1
    with pytest.raises(ConfigError, match=r"did you mean 'train.mlp.dropout'"):
        load_config(overrides=["train.mlp.drpout=0.1"])


def test_run_directory_paths_are_spelled_in_rundir_only():
    """No module but ``pipelines/records/rundir.py`` spells a path inside a run directory."""
    import re

    from shardflow.pipelines.records.rundir import MANIFEST, RunDir

    names = {
        MANIFEST,
        *RunDir._ETL_FILES.values(),
        *RunDir._TRAIN_FILES.values(),
        *RunDir._EVALUATE_FILES.values(),
        *RunDir._CHECKPOINT_FILES.values(),
        "config.yaml",
        "report.html",
        "performance-report.html",
    } - {"features", "quarantine"}
    inside = re.compile(r"^(etl|train|evaluate|checkpoints)/")
    found = constants_outside(
        "pipelines/records/rundir.py",
        lambda value: (
            isinstance(value, str)
            and (
                value in names
                or inside.match(value)
                or any(value.endswith(f"/{n}") or value.endswith(n) and "/" in value for n in names)
            )
        ),
    )
    assert found == []


def test_target_kinds_are_spelled_in_their_registry_only():
    from shardflow.tasks.targets import TASK_TYPES

    found = constants_outside("tasks/targets.py", lambda value: isinstance(value, str) and value in TASK_TYPES)
    assert found == []


def test_every_subpackage_is_packaged():
    """A non-editable install (``pip install .``, a wheel) holds every subpackage: each
    folder with an ``__init__.py`` under the layers is listed in pyproject.toml."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        "shardflow": "shardflow",
        "pipelines": "shardflow.pipelines",
        "tasks": "shardflow.tasks",
        "cluster": "shardflow.cluster",
        "data": "shardflow.data",
    }
    expected = {}
    for folder, package in folders.items():
        for init in (root / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(root / folder)
            name = ".".join([package, *relative.parts])
            expected[name] = str(init.parent.relative_to(root))
    assert set(setuptools["packages"]) == set(expected)
    assert setuptools["package-dir"] == expected


def test_a_moved_option_says_where_it_lives_now():
    from shardflow.pipelines.setup.config import ConfigError, default_config_path, load_config

    with pytest.raises(ConfigError, match=r"'train.xgboost.max_attempts' has moved: set 'train.max_attempts'"):
        load_config(default_config_path(), ["train.xgboost.max_attempts=2"])
    assert load_config(default_config_path(), ["train.max_attempts=2"]).train.max_attempts == 2
