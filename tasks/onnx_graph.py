"""ONNX graphs of a run's scoring path: the fitted preprocessing, the models, the outputs.

Built from a run's own files (the :class:`~shardflow.tasks.encode.Preprocessor` and the
model payloads), never by tracing shardflow code: the graph computes what
:meth:`Preprocessor.transform` and the families' ``predict`` functions compute, with ONNX
operators only, so a model runs wherever ONNX Runtime runs.

- numerics (double): missing and infinite values take the training mean, then clip,
  standardise and cast to float32, as the ETL does;
- categoricals (strings): ``LabelEncoder`` with the fitted vocabulary, ``""`` as missing
  (code 0), every other unseen value the rare/unseen code 1;
- XGBoost models: ``ai.onnx.ml.TreeEnsemble`` (opset 5) converted from the booster's JSON
  (:mod:`shardflow.tasks.onnx_trees`);
- MLPs: exported with ``torch.onnx`` and spliced in;
- the linear baseline: ``MatMul`` of the numerics, a ``Gather`` of each categorical's
  coefficients (its one-hot product), ``Sigmoid``/``Softmax``;
- ensembles: the members' probabilities (or values) averaged with their weights; the stacked
  combiner's logistic / multinomial / linear model on top.
"""

from __future__ import annotations

import numpy as np

from shardflow.tasks.onnx_trees import xgboost_scores

OPSET = 21
ML_OPSET = 5


class Graph:
    """A growing ONNX graph: nodes, initializers and unique tensor names."""

    def __init__(self):
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._count = 0

    def name(self, hint: str) -> str:
        """A fresh internal tensor name (``sf/…``: never an input column's name)."""
        self._count += 1
        return f"sf/{hint}_{self._count}"

    def input(self, name: str, elem_type: str) -> str:
        """The graph input ``name`` of ``elem_type`` (``"double"``, ``"string"``, ``"int64"``),
        added on first use; ``ValueError`` if it was added with another type."""
        from onnx import TensorProto, helper

        existing = self.input_type(name)
        if existing is None:
            self.inputs.append(helper.make_tensor_value_info(name, getattr(TensorProto, elem_type.upper()), ["N"]))
        elif existing != elem_type:
            raise ValueError(f"column {name!r} is a {existing} input, and would be a {elem_type} one too")
        return name

    def input_type(self, name: str) -> str | None:
        """The element type (``"double"``, ...) of the graph input ``name``; None if there is none."""
        from onnx import TensorProto

        for value in self.inputs:
            if value.name == name:
                return TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()
        return None

    def const(self, value, dtype=None, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        array = np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
        if array.dtype.kind in "OU":
            array = array.astype(object)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs, domain: str = "", hint: str | None = None, outputs: int = 1, **attrs):
        from onnx import helper

        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def model(self, doc: str = ""):
        from onnx import helper

        graph = helper.make_graph(self.nodes, "shardflow", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
            producer_name="shardflow",
            doc_string=doc,
        )
        model.ir_version = 10
        return model


# ----------------------------------------------------------------------------- preprocessing


def preprocessing(g: Graph, preprocessor, sources: dict | None = None) -> str:
    """The float32 ``[N, F]`` feature matrix; a graph input for every feature column that
    ``sources`` (column -> a tensor the graph computes: a joined or derived column) lacks."""
    from onnx import TensorProto

    from shardflow.tasks.encode import FIRST_CODE, MISSING_CODE, OTHER_CODE

    sources = sources or {}
    columns = []
    for name, lower, upper, mean, std in zip(
        preprocessor.numeric, preprocessor.lower, preprocessor.upper, preprocessor.mean, preprocessor.std
    ):
        col = sources.get(name) or g.input(name, "double")
        missing = g.op("Or", [g.op("IsNaN", [col]), g.op("IsInf", [col])])
        x = g.op("Where", [missing, g.const(mean, np.float64), col])
        x = g.op("Max", [x, g.const(-np.inf if lower is None else lower, np.float64)])
        x = g.op("Min", [x, g.const(np.inf if upper is None else upper, np.float64)])
        scale = std if std and std > 0 else 1.0
        x = g.op("Div", [g.op("Sub", [x, g.const(mean, np.float64)]), g.const(scale, np.float64)])
        columns.append(g.op("Cast", [x], to=TensorProto.FLOAT))
    for name in preprocessor.categorical:
        vocabulary = list(preprocessor.vocabularies[name])
        codes = g.op(
            "LabelEncoder",
            [sources.get(name) or g.input(name, "string")],
            domain="ai.onnx.ml",
            keys_strings=vocabulary + [""],
            values_int64s=[FIRST_CODE + i for i in range(len(vocabulary))] + [MISSING_CODE],
            default_int64=OTHER_CODE,
        )
        columns.append(g.op("Cast", [codes], to=TensorProto.FLOAT))
    axis = g.const([1], np.int64)
    stacked = [g.op("Unsqueeze", [c, axis]) for c in columns]
    return g.op("Concat", stacked, axis=1, hint="features") if len(stacked) > 1 else stacked[0]


# ----------------------------------------------------------------------------- MLP


def mlp_scores(g: Graph, features: str, params: dict, spec, kind) -> str:
    """The MLP exported with ``torch.onnx`` and spliced in; its activation and the target's
    standardisation undone (in double, as :func:`shardflow.tasks.neural.predict`)."""
    import io
    import warnings

    import onnx
    import torch
    from onnx import TensorProto

    from shardflow.tasks.neural import network

    net = network(spec, params).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(2, spec.n_numeric + len(spec.cardinalities)),),
            buffer,
            input_names=["x"],
            output_names=["out"],
            dynamic_axes={"x": {0: "N"}, "out": {0: "N"}},
            opset_version=OPSET,
            dynamo=False,
        )
    exported = onnx.compose.add_prefix(onnx.load_from_string(buffer.getvalue()), g.name("network") + "/")
    g.nodes.append(onnx.helper.make_node("Identity", [features], [exported.graph.input[0].name]))
    g.nodes.extend(exported.graph.node)
    g.initializers.extend(exported.graph.initializer)
    out = exported.graph.output[0].name
    if kind.multi_output:
        probabilities = g.op("Softmax", [out], axis=1)
        return g.op("Cast", [probabilities], to=TensorProto.DOUBLE)
    value = g.op("Sigmoid", [out]) if kind.is_classification else out
    value = g.op("Cast", [value], to=TensorProto.DOUBLE)
    if spec.target_scale != 1 or spec.target_shift:
        value = g.op(
            "Add",
            [g.op("Mul", [value, g.const(spec.target_scale, np.float64)]), g.const(spec.target_shift, np.float64)],
        )
    return value


# ----------------------------------------------------------------------------- combining


def as_double(g: Graph, tensor: str) -> str:
    from onnx import TensorProto

    return g.op("Cast", [tensor], to=TensorProto.DOUBLE)


def weighted_average(g: Graph, members: list, weights) -> str:
    """``Σ w_k p_k / Σ w_k`` of the members' predictions (double)."""
    total = float(np.sum(weights))
    terms = [g.op("Mul", [as_double(g, m), g.const(w / total, np.float64)]) for m, w in zip(members, weights)]
    return terms[0] if len(terms) == 1 else g.op("Sum", terms)


def stacked(g: Graph, members: list, coef, kind) -> str:
    """The stacked combiner (see :mod:`shardflow.tasks.combiners`) over the members' predictions."""
    coef = np.asarray(coef, dtype=np.float64)
    members = [as_double(g, m) for m in members]
    if kind.multi_output:
        k = len(coef) - len(members)
        logs = [g.op("Log", [g.op("Clip", [m, g.const(1e-9, np.float64), g.const(1.0, np.float64)])]) for m in members]
        z = g.const(coef[:k].reshape(1, k), np.float64)
        for a, log in zip(coef[k:], logs):
            z = g.op("Add", [z, g.op("Mul", [log, g.const(a, np.float64)])])
        return g.op("Softmax", [z], axis=1)
    if kind.is_classification:
        links = []
        for m in members:
            q = g.op("Clip", [m, g.const(1e-6, np.float64), g.const(1 - 1e-6, np.float64)])
            links.append(g.op("Log", [g.op("Div", [q, g.op("Sub", [g.const(1.0, np.float64), q])])]))
    else:
        links = members
    z = g.const(coef[0], np.float64)
    for a, link in zip(coef[1:], links):
        z = g.op("Add", [z, g.op("Mul", [link, g.const(a, np.float64)])])
    return g.op("Sigmoid", [z]) if kind.is_classification else z


# ----------------------------------------------------------------------------- outputs


def outputs(g: Graph, scores: str, preprocessor, kind) -> list:
    """Name the graph's outputs: ``probability`` (binary) or ``probabilities`` (multi-class)
    and ``label``; ``prediction`` for regression, in the target's units."""
    from onnx import TensorProto, helper

    from shardflow.tasks.labels import decode_labels
    from shardflow.tasks.targets import target_transform

    scores = as_double(g, scores)
    if not kind.is_classification:
        if target_transform(preprocessor.target_transform).name == "log1p":
            scores = g.op("Sub", [g.op("Exp", [scores]), g.const(1.0, np.float64)])
        g.nodes.append(helper.make_node("Identity", [scores], ["prediction"]))
        g.outputs.append(helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, ["N"]))
        return ["prediction"]
    classes = decode_labels(np.arange(len(preprocessor.classes)), preprocessor.classes, preprocessor.label_type)
    if kind.multi_output:
        codes = g.op("ArgMax", [scores], axis=1, keepdims=0)
        name, shape = "probabilities", ["N", len(classes)]
    else:
        codes = g.op("Cast", [g.op("GreaterOrEqual", [scores, g.const(0.5, np.float64)])], to=TensorProto.INT64)
        name, shape = "probability", ["N"]
    if classes.dtype == object:  # whole numbers beyond int64, or text: labels as strings
        classes = np.array([str(c) for c in classes], dtype=object)
    label_type = {"b": TensorProto.BOOL, "i": TensorProto.INT64}.get(classes.dtype.kind, TensorProto.STRING)
    lookup = classes.astype(object) if label_type == TensorProto.STRING else classes
    g.nodes.append(helper.make_node("Gather", [g.const(lookup, hint="classes"), codes], ["label"], axis=0))
    g.nodes.append(helper.make_node("Identity", [scores], [name]))
    g.outputs.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, shape))
    g.outputs.append(helper.make_tensor_value_info("label", label_type, ["N"]))
    return [name, "label"]


# ----------------------------------------------------------------------------- per family (see FAMILIES)


def export_linear(g: Graph, features: str, payload: dict, kind) -> str:
    """The linear baseline, as :func:`~shardflow.tasks.linear.predict_linear`: the intercept, the
    numerics' ``MatMul``, each categorical's coefficient looked up by its code (its one-hot
    product; a code without a column of its own takes ``other``'s), then ``Sigmoid``,
    ``Softmax`` or nothing (regression), in double."""
    from onnx import TensorProto

    from shardflow.tasks.encode import OTHER_CODE

    numeric = payload["numeric"]
    coef = np.asarray(payload["coef"], dtype=np.float64).reshape(-1, payload["outputs"])
    if not kind.multi_output:
        coef = coef[:, 0]
    z = g.const(coef[0], np.float64, hint="intercept")
    if numeric:
        ends = [g.const([0], np.int64), g.const([numeric], np.int64), g.const([1], np.int64)]
        x = as_double(g, g.op("Slice", [features, *ends]))
        z = g.op("Add", [z, g.op("MatMul", [x, g.const(coef[1 : 1 + numeric], np.float64, hint="weights")])])
    start = 1 + numeric
    for j, width in enumerate(payload["codes"]):
        code = g.op("Gather", [features, g.const(numeric + j, np.int64)], axis=1)
        code = g.op("Cast", [code], to=TensorProto.INT64)
        own = g.op(
            "And",
            [g.op("GreaterOrEqual", [code, g.const(0, np.int64)]), g.op("Less", [code, g.const(width, np.int64)])],
        )
        index = g.op("Where", [own, code, g.const(OTHER_CODE, np.int64)])
        table = g.const(coef[start : start + width], np.float64, hint="categories")
        z = g.op("Add", [z, g.op("Gather", [table, index], axis=0)])
        start += width
    if kind.multi_output:
        return g.op("Softmax", [z], axis=1)
    return g.op("Sigmoid", [z]) if kind.is_classification else z


def export_booster(g: Graph, features: str, payload: dict, kind) -> str:
    return xgboost_scores(g, features, payload["model"], kind)


def _booster_members(g: Graph, features: str, payload: dict, kind) -> list:
    return [xgboost_scores(g, features, model, kind) for model in payload["models"]]


def export_booster_ensemble(g: Graph, features: str, payload: dict, kind) -> str:
    return weighted_average(g, _booster_members(g, features, payload, kind), payload["weights"])


def export_stacked(g: Graph, features: str, payload: dict, kind) -> str:
    return stacked(g, _booster_members(g, features, payload, kind), payload["coef"], kind)


def _mlp_spec(payload: dict):
    from shardflow.tasks.neural import MLPSpec

    spec = payload["spec"]
    return spec if isinstance(spec, MLPSpec) else MLPSpec.from_dict(spec)


def export_mlp(g: Graph, features: str, payload: dict, kind) -> str:
    return mlp_scores(g, features, payload["params"], _mlp_spec(payload), kind)


def export_mlp_ensemble(g: Graph, features: str, payload: dict, kind) -> str:
    spec = _mlp_spec(payload)
    members = [mlp_scores(g, features, params, spec, kind) for params in payload["params"]]
    return weighted_average(g, members, payload["weights"])


def export_by_group(g: Graph, features: str, payload: dict, kind) -> str:
    """Each row scored by its own group's booster (its key's codes equal the group's), the
    other rows by the global one (``fallback``), as :func:`~shardflow.tasks.groups.predict_by_group`."""
    scores = as_double(g, xgboost_scores(g, features, payload["fallback"], kind))
    columns = [g.op("Gather", [features, g.const(c, np.int64)], axis=1) for c in payload["columns"]]
    for key, model in zip(payload["keys"], payload["models"]):
        mask = None
        for column, code in zip(columns, key):
            equal = g.op("Equal", [column, g.const(float(code), np.float32)])
            mask = equal if mask is None else g.op("And", [mask, equal])
        if kind.multi_output:
            mask = g.op("Unsqueeze", [mask, g.const([1], np.int64)])
        scores = g.op("Where", [mask, as_double(g, xgboost_scores(g, features, model, kind)), scores])
    return scores
