"""XGBoost boosters as ONNX operators: ``ai.onnx.ml.TreeEnsemble`` built from the booster's JSON.

The tree-ensemble part of a run's ONNX graph (:mod:`shardflow.tasks.onnx_graph` builds the
rest: preprocessing, MLPs, ensembles, outputs). Each booster's trees are flattened into
TreeEnsemble's node and leaf arrays (opset 5 of ``ai.onnx.ml``): numerical splits as
``BRANCH_LT`` with XGBoost's default direction for missing values, categorical splits as
``BRANCH_MEMBER`` sets; the booster's intercept is added to the margin and its objective's
activation (sigmoid, softmax, exp or none) applied, so the graph predicts what
:func:`~shardflow.tasks.models.predict_booster` predicts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from shardflow.tasks.onnx_graph import Graph

#: TreeEnsemble's node modes: ``BRANCH_LT``, ``BRANCH_MEMBER``, ``BRANCH_LEQ``.
_LT, _MEMBER, _LEQ = 1, 6, 0

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
