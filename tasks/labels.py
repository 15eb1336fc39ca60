"""Classification labels: numbers, booleans or strings in, class codes 0..K−1 out, and back.

A label is compared in a canonical text form, the *key*, so that the same label written
differently by different files or formats is one class: numbers as their shortest
decimal text (``1``, ``1.0`` and the CSV text ``"1"`` are the key ``1``), booleans and
the words true/false (any case) as ``true``/``false``, other text stripped of outer
spaces. The ETL counts keys across all partitions, fits the class list (the
vocabulary) once, and stores it with the key type, so predictions give labels back as
the user wrote them: whole numbers, booleans or strings.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

#: The prediction columns ``shardflow predict`` writes: the value or positive-class
#: probability, and the predicted label of a classifier.
PREDICTION = "prediction"
LABEL = "predicted_label"

#: Most classes a classification target may have (the metrics keep a K×K confusion matrix
#: and K score histograms per partition).
MAX_CLASSES = 64
#: Label types, as stored with the classes.
LABEL_TYPES = ("number", "boolean", "string")


def label_keys(series: pd.Series) -> pd.Series:
    """The canonical key of each label (see the module docstring); missing stays missing.

    Text is read as a number only when it is written as one without padding (``"1.0"`` is
    ``1``, but ``"007"``, ``"1_000"`` and ``"nan"`` stay text), and whole numbers keep every
    digit (no float rounding). Work is per distinct value, not per row.

    Examples
    --------
    >>> label_keys(pd.Series([1.0, 0, None])).tolist()
    ['1', '0', <NA>]
    >>> label_keys(pd.Series([" pro", "basic", "", "TRUE", "2.50", "007", "+3"], dtype=object)).tolist()
    ['pro', 'basic', <NA>, 'true', '2.5', '007', '3']
    >>> label_keys(pd.Series([True, False])).tolist()
    ['true', 'false']
    >>> label_keys(pd.Series([9007199254740993], dtype="int64")).tolist()
    ['9007199254740993']
    """
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    keys = np.array([_key(value) for value in uniques] + [None], dtype=object)
    return pd.Series(keys[codes], index=series.index, dtype="string")


_NUMBER = re.compile(r"[+-]?(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")


def _key(value):
    """The key of one label value (None: missing)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _float_key(float(value))
    text = str(value).strip()
    if not text:
        return None
    if text.lower() in ("true", "false"):
        return text.lower()
    if _INTEGER.fullmatch(text):
        return str(int(text))
    if _NUMBER.fullmatch(text):
        return _float_key(float(text))
    return text


def _float_key(value: float) -> str:
    if math.isfinite(value) and value.is_integer() and abs(value) < 2.0**53:
        return str(int(value))
    return repr(value)


def label_type(keys) -> str:
    """``number`` if every key is a number, ``boolean`` if all are true/false, else ``string``.

    Examples
    --------
    >>> label_type(["0", "1"]), label_type(["false", "true"]), label_type(["no", "yes"])
    ('number', 'boolean', 'string')
    """
    keys = list(keys)
    if keys and all(_is_number(k) for k in keys):
        return "number"
    if keys and set(keys) <= {"true", "false"}:
        return "boolean"
    return "string"


def _is_number(key: str) -> bool:
    """Whether a key is a number's (keys are canonical: see :func:`label_keys`)."""
    return bool(_NUMBER.fullmatch(key))


def sorted_classes(keys) -> list:
    """Classes in their natural order: numbers ascending, false before true, text by code point.

    For a binary target the second class is the positive one (``1``, ``true``, ``yes``).

    Examples
    --------
    >>> sorted_classes(["10", "9", "-1"]), sorted_classes(["yes", "no"])
    (['-1', '9', '10'], ['no', 'yes'])
    """
    keys = list(keys)
    kind = label_type(keys)
    if kind == "number":
        return sorted(keys, key=float)
    return sorted(keys)


def non_whole_numbers(keys) -> list:
    """The keys that are numbers but not whole ones (classes are never fractions)."""
    return [k for k in keys if _is_number(k) and not float(k).is_integer()]


def encode_labels(keys, classes) -> np.ndarray:
    """Class code (position in ``classes``) of each key; -1 for a key not in it or missing."""
    from shardflow.core import backend

    return backend.category_codes(keys, list(classes))


def decode_labels(codes: np.ndarray, classes, kind: str) -> np.ndarray:
    """The labels of class ``codes``, typed as the user wrote them (``kind``: see :func:`label_type`).

    Examples
    --------
    >>> decode_labels(np.array([1, 0, 1]), ["no", "yes"], "string").tolist()
    ['yes', 'no', 'yes']
    >>> decode_labels(np.array([0, 1]), ["false", "true"], "boolean").tolist()
    [False, True]
    >>> decode_labels(np.array([2, 0]), ["0", "1", "7"], "number").tolist()
    [7, 0]
    """
    if kind == "number":
        numbers = [int(k) if _INTEGER.fullmatch(k) else float(k) for k in classes]
        fits = all(isinstance(v, int) and -(2**63) <= v < 2**63 for v in numbers)
        values = np.array(numbers, dtype=np.int64 if fits else object)
    elif kind == "boolean":
        values = np.array([k == "true" for k in classes], dtype=bool)
    else:
        values = np.array(list(classes), dtype=object)
    return values[np.asarray(codes, dtype=np.int64)]


def probability_column(key: str) -> str:
    """The prediction column holding the probability of class ``key``."""
    return f"probability_{key}"
