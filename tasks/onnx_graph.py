"""ONNX graphs of a run's scoring path: the fitted preprocessing, the models, the outputs.

Built from a run's own files (the :class:`~shardflow.tasks.encode.Preprocessor` and the
model payloads), never by tracing shardflow code: the graph computes what
:meth:`Preprocessor.transform` and the families' ``predict`` functions compute, with ONNX
operators only, so a model runs wherever ONNX Runtime runs.

- numerics (double): missing and infinite values take the training mean, then clip,
  standardise and cast to float32, as the ETL does;
- categoricals (strings): ``LabelEncoder`` with the fitted vocabulary, ``""`` as missing
  (code 0), every other unseen value the rare/unseen code 1;
- XGBoost models: ``ai.onnx.ml.TreeEnsemble`` (opset 5) converted from the booster's JSON,
  numerical splits as ``BRANCH_LT`` with XGBoost's default direction for missing values,
  categorical splits as ``BRANCH_MEMBER`` sets, the booster's intercept added;
- MLPs: exported with ``torch.onnx`` and spliced in;
- ensembles: the members' probabilities (or values) averaged with their weights; the stacked
  combiner's logistic / multinomial / linear model on top.
"""

from __future__ import annotations

import json

import numpy as np

OPSET = 21
ML_OPSET = 5
_LT, _MEMBER, _LEQ = 1, 6, 0


class Graph:
    """A growing ONNX graph: nodes, initializers and unique tensor names."""

    def __init__(self):
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._count = 0

    def name(self, hint: str) -> str:
        """A fresh internal tensor name (``sf/…``: never an input column's name)."""
        self._count += 1
        return f"sf/{hint}_{self._count}"

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


def preprocessing(g: Graph, preprocessor) -> str:
    """Graph inputs for every model input column, and the float32 ``[N, F]`` feature matrix."""
    from onnx import TensorProto, helper

    from shardflow.tasks.encode import FIRST_CODE, MISSING_CODE, OTHER_CODE

    columns = []
    for col, lower, upper, mean, std in zip(
        preprocessor.numeric, preprocessor.lower, preprocessor.upper, preprocessor.mean, preprocessor.std
    ):
        g.inputs.append(helper.make_tensor_value_info(col, TensorProto.DOUBLE, ["N"]))
        missing = g.op("Or", [g.op("IsNaN", [col]), g.op("IsInf", [col])])
        x = g.op("Where", [missing, g.const(mean, np.float64), col])
        x = g.op("Max", [x, g.const(-np.inf if lower is None else lower, np.float64)])
        x = g.op("Min", [x, g.const(np.inf if upper is None else upper, np.float64)])
        scale = std if std and std > 0 else 1.0
        x = g.op("Div", [g.op("Sub", [x, g.const(mean, np.float64)]), g.const(scale, np.float64)])
        columns.append(g.op("Cast", [x], to=TensorProto.FLOAT))
    for col in preprocessor.categorical:
        g.inputs.append(helper.make_tensor_value_info(col, TensorProto.STRING, ["N"]))
        vocabulary = list(preprocessor.vocabularies[col])
        codes = g.op(
            "LabelEncoder",
            [col],
            domain="ai.onnx.ml",
            keys_strings=vocabulary + [""],
            values_int64s=[FIRST_CODE + i for i in range(len(vocabulary))] + [MISSING_CODE],
            default_int64=OTHER_CODE,
        )
        columns.append(g.op("Cast", [codes], to=TensorProto.FLOAT))
    axis = g.const([1], np.int64)
    stacked = [g.op("Unsqueeze", [c, axis]) for c in columns]
    return g.op("Concat", stacked, axis=1, hint="features") if len(stacked) > 1 else stacked[0]


# ----------------------------------------------------------------------------- XGBoost


#: How each exportable XGBoost objective turns the margin into its prediction.
OBJECTIVE_ACTIVATIONS = {
    "binary:logistic": "sigmoid",
    "reg:logistic": "sigmoid",
    "multi:softprob": "softmax",
    "reg:squarederror": "identity",
    "reg:absoluteerror": "identity",
    "reg:quantileerror": "identity",
    "reg:pseudohubererror": "identity",
    "reg:squaredlogerror": "identity",
    "count:poisson": "exp",
    "reg:gamma": "exp",
    "reg:tweedie": "exp",
}


def xgboost_margin(g: Graph, features: str, model: bytes) -> tuple:
    """The booster's margin ``[N, T]`` (T = classes, or 1): its trees and its intercept; and
    the activation of its objective (see :data:`OBJECTIVE_ACTIVATIONS`)."""
    from onnx import numpy_helper

    booster = _booster(model)
    info = json.loads(booster.save_raw("json"))
    learner = info["learner"]
    if learner["gradient_booster"]["name"] != "gbtree":
        raise ValueError(f"booster {learner['gradient_booster']['name']!r}: only gbtree models export to ONNX")
    trees = learner["gradient_booster"]["model"]["trees"]
    targets = learner["gradient_booster"]["model"]["tree_info"]
    n_targets = max(1, int(learner["learner_model_param"].get("num_class", "0") or 0))
    arrays = _tree_arrays(trees, targets)
    activation = OBJECTIVE_ACTIVATIONS.get(learner["objective"]["name"])
    if activation is None:
        raise ValueError(
            f"XGBoost objective {learner['objective']['name']!r} does not export to ONNX yet (exported: "
            f"{', '.join(sorted(OBJECTIVE_ACTIVATIONS))})"
        )
    trees_out = g.op(
        "TreeEnsemble",
        [features],
        domain="ai.onnx.ml",
        n_targets=n_targets,
        aggregate_function=1,
        post_transform=0,
        tree_roots=arrays["roots"],
        nodes_featureids=arrays["features"],
        nodes_modes=numpy_helper.from_array(np.array(arrays["modes"], np.uint8)),
        nodes_splits=numpy_helper.from_array(np.array(arrays["splits"], np.float32)),
        nodes_truenodeids=arrays["true_ids"],
        nodes_trueleafs=arrays["true_leafs"],
        nodes_falsenodeids=arrays["false_ids"],
        nodes_falseleafs=arrays["false_leafs"],
        nodes_missing_value_tracks_true=arrays["missing_true"],
        leaf_targetids=arrays["leaf_targets"],
        leaf_weights=numpy_helper.from_array(np.array(arrays["leaf_weights"], np.float32)),
        membership_values=numpy_helper.from_array(np.array(arrays["members"] or [np.nan], np.float32)),
    )
    margin = g.op("Add", [trees_out, g.const(_intercept(booster, arrays, n_targets), np.float32)], hint="margin")
    return margin, activation


def _booster(model: bytes):
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    return booster


def _tree_arrays(trees: list, targets: list) -> dict:
    """Flatten XGBoost's trees into TreeEnsemble's node and leaf arrays.

    XGBoost sends a row left when ``x < split`` (or, for a categorical split, when its
    category is *not* in the split's set) and missing values the node's default way.
    """
    out = {
        k: []
        for k in (
            "roots",
            "features",
            "modes",
            "splits",
            "true_ids",
            "true_leafs",
            "false_ids",
            "false_leafs",
            "missing_true",
            "leaf_targets",
            "leaf_weights",
            "members",
        )
    }
    for tree, target in zip(trees, targets):
        left, right = tree["left_children"], tree["right_children"]
        values, features = tree["split_conditions"], tree["split_indices"]
        categories = {
            node: tree["categories"][start : start + size]
            for node, start, size in zip(
                tree.get("categories_nodes", []), tree.get("categories_segments", []), tree.get("categories_sizes", [])
            )
        }
        node_id, leaf_id = {}, {}
        for i in range(len(left)):
            if left[i] == -1:
                leaf_id[i] = len(out["leaf_weights"])
                out["leaf_weights"].append(values[i])
                out["leaf_targets"].append(int(target))
            else:
                node_id[i] = len(out["features"]) + len(node_id)
        base = len(out["features"])
        if not node_id:  # a tree that is one leaf: a split that goes there either way
            out["roots"].append(base)
            _append_node(out, 0, mode=_LEQ, split=0.0, true=(leaf_id[0], 1), false=(leaf_id[0], 1), missing_true=True)
            continue
        out["roots"].append(node_id[0])
        for i in sorted(node_id):

            def child(c, leaf_id=leaf_id, node_id=node_id):
                return (leaf_id[c], 1) if c in leaf_id else (node_id[c], 0)

            if i in categories:  # in the set: right (true); otherwise left
                out["members"].extend([*map(float, categories[i]), np.nan])
                _append_node(
                    out,
                    features[i],
                    mode=_MEMBER,
                    split=0.0,
                    true=child(right[i]),
                    false=child(left[i]),
                    missing_true=not bool(tree["default_left"][i]),
                )
            else:
                _append_node(
                    out,
                    features[i],
                    mode=_LT,
                    split=values[i],
                    true=child(left[i]),
                    false=child(right[i]),
                    missing_true=bool(tree["default_left"][i]),
                )
    return out


def _append_node(out, feature, *, mode, split, true, false, missing_true) -> None:
    out["features"].append(int(feature))
    out["modes"].append(mode)
    out["splits"].append(float(split))
    out["true_ids"].append(true[0])
    out["true_leafs"].append(true[1])
    out["false_ids"].append(false[0])
    out["false_leafs"].append(false[1])
    out["missing_true"].append(int(missing_true))


def _intercept(booster, arrays, n_targets) -> np.ndarray:
    """The booster's base margin: its margin on a row of missing values minus the sum of
    the leaves that row reaches (every split sends a missing value its default way)."""
    import xgboost as xgb

    n = booster.num_features()
    row = np.full((1, n), np.nan, np.float32)
    matrix = xgb.DMatrix(
        row,
        missing=np.nan,
        feature_names=booster.feature_names,
        feature_types=booster.feature_types,
        enable_categorical=True,
    )
    margin = np.asarray(booster.predict(matrix, output_margin=True), np.float64)
    reached = np.zeros(n_targets)
    for root in arrays["roots"]:
        node, leaf = root, 0
        while not leaf:
            if arrays["missing_true"][node]:
                node, leaf = arrays["true_ids"][node], arrays["true_leafs"][node]
            else:
                node, leaf = arrays["false_ids"][node], arrays["false_leafs"][node]
        reached[arrays["leaf_targets"][node]] += np.float32(arrays["leaf_weights"][node])
    return (margin.reshape(-1)[:n_targets] - reached).reshape(1, n_targets)


def xgboost_scores(g: Graph, features: str, model: bytes, kind) -> str:
    """The booster's predictions as the family predicts them: ``[N]`` or ``[N, K]``."""
    margin, activation = xgboost_margin(g, features, model)
    if activation == "softmax":
        return g.op("Softmax", [margin], axis=1)
    flat = g.op("Reshape", [margin, g.const([-1], np.int64)])
    return {"sigmoid": lambda: g.op("Sigmoid", [flat]), "exp": lambda: g.op("Exp", [flat]), "identity": lambda: flat}[
        activation
    ]()


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
