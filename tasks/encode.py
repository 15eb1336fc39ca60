"""Fitted preprocessing (vocabularies, clip bounds, scaling) and its per-partition transform."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from shardflow.core import backend
from shardflow.tasks.labels import decode_labels, encode_labels
from shardflow.tasks.schema import SPLIT_COLUMN, WEIGHT_COLUMN
from shardflow.tasks.stats import clip_columns
from shardflow.tasks.targets import target_kind, target_transform

#: Code of a missing categorical value.
MISSING_CODE = 0
#: Code of a category that is rare in the training data or unseen at prediction time.
OTHER_CODE = 1
#: How :meth:`Preprocessor.inverse_transform` spells ``OTHER_CODE``.
OTHER_LABEL = "(other)"
#: Code of ``vocabulary[0]``; ``vocabulary[k]`` is ``FIRST_CODE + k``.
FIRST_CODE = 2


def fit_vocabulary(counts: pd.Series, min_frequency: int, max_categories: int) -> list[str]:
    """Categories kept for encoding: frequent enough, most frequent first, ties by value.

    Examples
    --------
    >>> import pandas as pd
    >>> fit_vocabulary(pd.Series({"cash": 50, "card": 90, "app": 50, "gift": 2}), min_frequency=10, max_categories=2)
    ['card', 'app']
    """
    kept = counts[counts >= min_frequency]
    order = sorted(zip(kept.index, kept.to_numpy()), key=lambda kv: (-int(kv[1]), str(kv[0])))
    return [str(value) for value, _ in order[:max_categories]]


@dataclass
class Preprocessor:
    """Everything fitted on the whole table that the transform of one partition needs.

    Saved as JSON next to the features, and loaded again for batch inference, so a
    model always sees inputs prepared exactly as at training time.

    Attributes
    ----------
    numeric : list of str
        Numeric feature columns, in model input order.
    lower, upper : list of float or None
        Clip bounds per numeric column (``None``: no clipping).
    mean, std : list of float
        Mean and population standard deviation of each clipped numeric column; the
        mean also imputes missing values (they standardise to 0).
    categorical : list of str
        Categorical feature columns, after the numeric ones in model input order.
    vocabularies : dict of str to list of str
        Kept categories per column; see ``MISSING_CODE``, ``OTHER_CODE``, ``FIRST_CODE``.
    target, task : str
        The target column and its resolved kind (see :func:`~shardflow.tasks.targets.resolve_kind`).
    classes : list of str
        Classification: the label keys (see :mod:`shardflow.tasks.labels`) of codes 0..K−1;
        ``label_type`` says how predictions spell them.
    target_transform : str
        Regression: the models learn ``transform(y)`` (``none``, ``log1p``).
    target_shift, target_scale : float
        Regression: mean and standard deviation of the transformed target over the training
        split (the MLP learns the standardised target).
    weighted : bool
        Whether rows carry sample weights (the ``_weight`` column).
    """

    numeric: list
    lower: list
    upper: list
    mean: list
    std: list
    categorical: list
    vocabularies: dict
    target: str
    task: str
    keep_columns: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    label_type: str = "number"
    target_transform: str = "none"
    target_shift: float = 0.0
    target_scale: float = 1.0
    weighted: bool = False

    @property
    def feature_names(self) -> list[str]:
        return list(self.numeric) + list(self.categorical)

    @property
    def cardinalities(self) -> dict:
        """Number of distinct codes of each categorical column (for embeddings)."""
        return {col: FIRST_CODE + len(self.vocabularies[col]) for col in self.categorical}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        data = json.loads(text)
        if target_kind(data["task"]).is_classification and not data.get("classes"):
            data["classes"] = ["0", "1"]  # a run made before labels were fitted: 0/1 targets only
        return cls(**data)

    def transform(self, features):
        """Clip, impute, standardise and encode one prepared partition.

        Parameters
        ----------
        features : pandas.DataFrame or cudf.DataFrame
            The ``features`` output of :func:`~shardflow.tasks.prepare.prepare_partition`.

        Returns
        -------
        DataFrame
            ``keep_columns`` (those present: rows to score may lack them), numeric features
            as float32, categorical codes as int32, the target as float32 and the boolean
            ``_is_validation`` column.
        """
        kept = [c for c in self.keep_columns if c in features.columns]
        out = features[kept].copy() if kept else features[[]].copy()
        if self.numeric:
            lower = [-np.inf if v is None else v for v in self.lower]
            upper = [np.inf if v is None else v for v in self.upper]
            clipped = clip_columns(features[list(self.numeric)], self.numeric, lower, upper)
            for col, mean, std in zip(self.numeric, self.mean, self.std):
                scale = std if std and std > 0 else 1.0
                out[col] = ((clipped[col].fillna(mean) - mean) / scale).astype("float32")
        for col in self.categorical:
            codes = backend.category_codes(features[col], self.vocabularies[col])
            missing = backend.to_host_array(features[col].isna(), bool)
            encoded = np.where(codes >= 0, codes + FIRST_CODE, OTHER_CODE)
            encoded[missing] = MISSING_CODE
            out[col] = encoded.astype(np.int32)
        if self.target in features.columns:
            out[self.target] = self._encode_target(features[self.target])
        if SPLIT_COLUMN in features.columns:
            out[SPLIT_COLUMN] = features[SPLIT_COLUMN]
        if WEIGHT_COLUMN in features.columns:
            out[WEIGHT_COLUMN] = features[WEIGHT_COLUMN].astype("float32")
        return out

    def inverse_transform(self, encoded) -> pd.DataFrame:
        """The features of :meth:`transform` in the input's terms: numeric columns in their
        units (un-standardised; clipped values stay clipped and imputed ones read as the
        mean), categorical codes as their categories (text, as the vocabulary keeps them;
        ``OTHER_LABEL`` for a rare or unseen one, missing for a missing one), the target as
        its labels (boolean, integer or text, as the labels are; missing where a row has
        none) or in its units (the
        target transform undone). Other columns pass through. A pandas DataFrame in and out
        (a cuDF one is brought to the host); for exploring, not for training.

        Examples
        --------
        >>> prep = Preprocessor(numeric=["fare"], lower=[None], upper=[None], mean=[10.0], std=[2.0],
        ...                     categorical=["city"], vocabularies={"city": ["north", "south"]},
        ...                     target="late", task="binary", classes=["no", "yes"], label_type="string")
        >>> codes = pd.DataFrame({"fare": [0.5, -1.0], "city": [2, 1], "late": [1.0, 0.0]})
        >>> prep.inverse_transform(codes)
           fare     city late
        0  11.0    north  yes
        1   8.0  (other)   no
        """
        frame = encoded if isinstance(encoded, pd.DataFrame) else encoded.to_pandas()
        out = frame.copy()
        for col, mean, std in zip(self.numeric, self.mean, self.std):
            if col in out.columns:
                scale = std if std and std > 0 else 1.0
                out[col] = frame[col].astype("float64") * scale + mean
        for col in self.categorical:
            if col in out.columns:
                labels = np.array([None, OTHER_LABEL, *self.vocabularies[col]], dtype=object)
                out[col] = pd.Series(labels[frame[col].to_numpy(np.int64)], index=frame.index, dtype="string")
        if self.target in out.columns:
            target = frame[self.target].to_numpy(np.float64)
            if self.classes:
                known = ~np.isnan(target)
                decoded = decode_labels(target[known].astype(np.int64), self.classes, self.label_type)
                labels = np.full(len(target), None, dtype=object)
                labels[known] = decoded
                # Missing labels (rows to score) as missing, in the labels' own kind.
                kind = {"boolean": "boolean", "string": "string"}.get(self.label_type)
                kind = kind or (
                    "Int64"
                    if decode_labels(np.arange(len(self.classes)), self.classes, "number").dtype.kind == "i"
                    else "Float64"
                )
                out[self.target] = pd.Series(pd.array(list(labels), dtype=kind), index=frame.index)
            else:
                out[self.target] = target_transform(self.target_transform).inverse(target)
        return out

    def _encode_target(self, target):
        """The target as models learn it: a class code, or the transformed value."""
        if self.classes and target.dtype.kind not in "f":  # labels (prediction has none: NaN)
            codes = encode_labels(target, self.classes).astype(np.float32)
            codes[codes < 0] = np.nan
            return backend.host_series_like(target, pd.Series(codes))
        return target_transform(self.target_transform).forward(target.astype("float64")).astype("float32")
