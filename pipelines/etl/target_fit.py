"""The target's encoding, fitted on the client from the ETL's profile (pass 1).

Checks that the target fits ``target.task`` (one-line errors that say what was found and
what to write), then fits what the preprocessor stores: the resolved kind, the classes and
how they are spelled, or a regression target's transform and training-split statistics.
"""

from __future__ import annotations

import logging

import numpy as np

from shardflow.core.errors import InputError
from shardflow.pipelines.setup.config import Config
from shardflow.tasks.labels import MAX_CLASSES, label_type, non_whole_numbers, sorted_classes
from shardflow.tasks.targets import resolve_kind, target_kind

logger = logging.getLogger("shardflow.etl")


def check_target_type(profile, config: Config) -> None:
    """A regression target that is mostly text is a classification target in disguise."""
    column = config.target.column
    total = profile.rows + sum(profile.quarantined.values())
    not_numbers = profile.quarantined.get(f"{column}: not a number", 0)
    if profile.target_examples and not_numbers * 2 > total:
        shown = ", ".join(repr(v) for v in profile.target_examples)
        raise InputError(
            f"target {column!r} holds strings such as {shown} in {not_numbers} of {total} rows of "
            f"{config.input.path!r}, but target.task is regression, which needs numbers; set target.task: "
            "classification (labels may be strings), or fix the column"
        )


def check_labels(profile, config: Config) -> None:
    """A classifier needs 2..``MAX_CLASSES`` labels, and numbers among them must be whole."""
    column = config.target.column
    labels = profile.target_values
    keys = sorted_classes(labels)
    shown = ", ".join(keys[:6])
    if profile.target_values_truncated or len(labels) > MAX_CLASSES:
        raise InputError(
            f"target {column!r} holds more than {MAX_CLASSES} distinct values (e.g. {shown}) but target.task is "
            f"classification, which allows at most {MAX_CLASSES} classes; set target.task: regression, or "
            f"derive classes with target.expression (e.g. '{column} > {keys[len(keys) // 2]}')"
        )
    fractions = non_whole_numbers(keys)
    if fractions and label_type(keys) == "number":
        raise InputError(
            f"target {column!r} holds fractional numbers such as {', '.join(fractions[:3])} but target.task is "
            "classification, whose labels are whole numbers, booleans or strings; set target.task: regression, "
            f"or derive classes with target.expression (e.g. '{column} > {fractions[len(fractions) // 2]}')"
        )
    if len(labels) < 2:
        raise InputError(
            f"target {column!r} has only one class ({shown or 'none'}) in the {profile.rows} kept rows of "
            f"{config.input.path!r}; a classifier needs at least two: check the input, clean.valid_ranges, "
            "target.classes or target.expression"
        )


def target_encoding(profile, config: Config, spec) -> dict:
    """The preprocessor's target fields: the resolved kind, the classes (configured, else
    fitted over every partition) and, for regression, the transformed target's training
    statistics (the MLP standardises with them)."""
    kind = target_kind(config.target.task)
    if kind.is_classification:
        classes = list(spec.classes) or sorted_classes(profile.target_values)
        missing = [c for c in classes if not profile.target_values.get(c)]
        if missing:
            logger.warning(
                "target %r: class(es) %s of target.classes never occur in the kept rows",
                config.target.column,
                ", ".join(missing),
            )
        logger.info("target %r: %d classes (%s)", config.target.column, len(classes), ", ".join(classes[:10]))
        if {"true", "false"} & set(classes) and any(label_type([c]) == "number" for c in classes):
            logger.warning(
                "target %r mixes booleans and numbers (%s): they are different classes; write one "
                "spelling, or set target.classes",
                config.target.column,
                ", ".join(classes[:10]),
            )
        return {
            "task": resolve_kind(config.target.task, len(classes)),
            "classes": classes,
            "label_type": label_type(classes),
            "weighted": spec.weight is not None,
        }
    moments = profile.model_target
    std = float(np.nan_to_num(moments.std[0]))
    return {
        "task": config.target.task,
        "target_transform": config.target.transform,
        "target_shift": float(moments.mean[0]) if moments.count[0] else 0.0,
        "target_scale": std if std > 0 else 1.0,
        "weighted": spec.weight is not None,
    }
