"""EHR (vitals and labs) transforms: a YAML feature spec, a normalised vector with missing indicators.

FeatureSpec
    Read from YAML (``FeatureSpec.from_yaml(path)``)::

        features:
          - name: spo2            # the CSV column / key in the raw dict
            unit: "%"             # documentation; shown in errors and reports
            min: 50               # plausible range: values outside are treated as errors of entry
            max: 100
            default: 96           # imputation value for missing or implausible values
            mean: 95.0            # normalisation: (value - mean) / std
            std: 3.0
            description: peripheral oxygen saturation   # optional

    Every field but ``description`` is required; ``min < max``, ``std > 0`` and ``min <= default <= max``
    are checked, as are duplicate names; a problem raises :class:`~common.errors.InputDataError` naming
    the YAML file and the feature.

EHRVectord
    Turns the raw values of one encounter (a dict ``{name: value}``; values may be numbers or CSV cells:
    ``"93"``, ``" 37,5 "``, ``""``, ``"NA"``, ``None``) into a float32 vector of length ``2 * n``:
    ``n`` normalised values in spec order, then ``n`` missing-value indicators. A value that is
    missing, not a number, or outside the plausible [min, max] is replaced by the feature's ``default``
    and its indicator is 1, so a model can tell an imputed value from a measured one. The names of the
    imputed features are written under ``f"{key}_{imputed_postfix}"`` as one comma-separated string
    (a string, unlike a list, batches with any DataLoader collate).

read_ehr_csv
    Reads a CSV (one row per encounter) into a list of row dicts of strings, after checking that the
    spec's feature columns and ``required_columns`` are present; a missing column raises
    :class:`~common.errors.InputDataError` naming the CSV and every missing column. Empty cells are
    allowed (they are imputed by ``EHRVectord``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.errors import InputDataError

__all__ = ["Feature", "FeatureSpec", "EHRVectord", "read_ehr_csv", "parse_value", "MISSING_TOKENS"]

logger = logging.getLogger(__name__)

#: Cell contents read as "not measured" (case-insensitive, after stripping spaces).
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "missing", "?", "-", "--", ".", "nd"})

_REQUIRED_FIELDS = ("name", "unit", "min", "max", "default", "mean", "std")


@dataclass(frozen=True)
class Feature:
    """One EHR feature: unit, plausible range, imputation default and normalisation statistics."""

    name: str
    unit: str
    min: float
    max: float
    default: float
    mean: float
    std: float
    description: str = ""

    def normalise(self, value: float) -> float:
        return (value - self.mean) / self.std


@dataclass
class FeatureSpec:
    """The ordered EHR features a model takes (see the module docstring for the YAML format)."""

    features: list[Feature] = field(default_factory=list)
    source: str | None = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def output_names(self) -> list[str]:
        """Names of the vector's entries: the features, then ``<name>_missing`` indicators."""
        return self.names + [f"{n}_missing" for n in self.names]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> FeatureSpec:
        """Read and validate a feature spec YAML file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InputDataError(path, "feature spec file not found")
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InputDataError(path, f"not valid YAML: {e}") from e
        return cls.from_dict(content, source=path)

    @classmethod
    def from_dict(cls, content: Any, source: str | os.PathLike | None = None) -> FeatureSpec:
        """Build from parsed YAML: ``{"features": [...]}`` or the list of features itself."""
        where = None if source is None else os.fspath(source)
        items = content.get("features") if isinstance(content, Mapping) else content
        if not isinstance(items, list) or not items:
            raise InputDataError(where, "a feature spec needs a non-empty list under 'features'")
        features: list[Feature] = []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise InputDataError(where, f"feature #{index + 1} is not a mapping of fields: {item!r}")
            label = f"feature #{index + 1} ({item.get('name', 'no name')!s})"
            missing = [k for k in _REQUIRED_FIELDS if k not in item or item[k] is None]
            if missing:
                raise InputDataError(where, f"{label}: missing field(s) {', '.join(missing)}")
            unknown = sorted(set(item) - set(_REQUIRED_FIELDS) - {"description"})
            if unknown:
                raise InputDataError(where, f"{label}: unknown field(s) {', '.join(map(str, unknown))}")
            numbers = {}
            for k in ("min", "max", "default", "mean", "std"):
                value = item[k]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise InputDataError(where, f"{label}: {k} must be a finite number, got {value!r}")
                numbers[k] = float(value)
            name = str(item["name"]).strip()
            if not name:
                raise InputDataError(where, f"{label}: empty name")
            if not numbers["min"] < numbers["max"]:
                raise InputDataError(
                    where, f"{label}: min {numbers['min']:g} must be below max {numbers['max']:g}"
                )
            if not numbers["std"] > 0:
                raise InputDataError(where, f"{label}: std must be positive, got {numbers['std']:g}")
            if not numbers["min"] <= numbers["default"] <= numbers["max"]:
                raise InputDataError(
                    where,
                    f"{label}: default {numbers['default']:g} outside the plausible range "
                    f"[{numbers['min']:g}, {numbers['max']:g}]",
                )
            features.append(
                Feature(
                    name=name,
                    unit=str(item["unit"]),
                    description=str(item.get("description") or ""),
                    **numbers,
                )
            )
        names = [f.name for f in features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputDataError(where, f"duplicate feature name(s): {', '.join(duplicates)}")
        return cls(features=features, source=where)

    def to_dict(self) -> dict[str, Any]:
        return {"features": [asdict(f) for f in self.features]}

    def all_missing_vector(self) -> np.ndarray:
        """The vector of an encounter without any EHR value: what :class:`EHRVectord` makes of an empty row.

        Returns:
            float32 ``(2n,)``: every feature's ``default``, normalised, then ``n`` missing indicators of 1.
        """
        return self.vectorise({})[0]

    def vectorise(self, values: Mapping[str, Any] | Sequence[Any]) -> tuple[np.ndarray, list[str]]:
        """Raw values -> (float32 vector [normalised..., indicators...], names of imputed features)."""
        if isinstance(values, Mapping):
            raw = [values.get(f.name) for f in self.features]
        else:
            raw = list(values)
            if len(raw) != len(self.features):
                raise ValueError(
                    f"{len(raw)} values given for {len(self.features)} features ({', '.join(self.names)})"
                )
        normalised = np.empty(len(self.features), dtype=np.float32)
        indicators = np.zeros(len(self.features), dtype=np.float32)
        imputed: list[str] = []
        for i, (feature, cell) in enumerate(zip(self.features, raw)):
            value = parse_value(cell)
            if value is None and cell is not None and not _is_missing_token(cell):
                logger.warning(
                    "EHR feature %s: value is not a number; imputed %g %s",
                    feature.name,
                    feature.default,
                    feature.unit,
                )
            elif value is not None and not feature.min <= value <= feature.max:
                logger.warning(
                    "EHR feature %s: value %g %s outside the plausible range [%g, %g]; imputed %g",
                    feature.name, value, feature.unit, feature.min, feature.max, feature.default,
                )  # fmt: skip
                value = None
            if value is None:
                value = feature.default
                indicators[i] = 1.0
                imputed.append(feature.name)
            normalised[i] = feature.normalise(value)
        return np.concatenate([normalised, indicators]), imputed


def _is_missing_token(cell: Any) -> bool:
    if cell is None:
        return True
    if isinstance(cell, float) and math.isnan(cell):
        return True
    return isinstance(cell, str) and cell.strip().lower() in MISSING_TOKENS


def parse_value(cell: Any) -> float | None:
    """A raw cell as a finite float, or None when missing or not a number.

    Accepts numbers, numeric strings with spaces, and a decimal comma (``"37,5"``).
    """
    if cell is None or isinstance(cell, bool):
        return None if cell is None else float(cell)
    if isinstance(cell, (int, float, np.integer, np.floating)):
        value = float(cell)
    elif isinstance(cell, torch.Tensor) and cell.numel() == 1:
        value = float(cell.item())
    elif isinstance(cell, str):
        text = cell.strip()
        if text.lower() in MISSING_TOKENS:
            return None
        if text.count(",") == 1 and "." not in text:
            text = text.replace(",", ".")
        try:
            value = float(text)
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def _as_spec(spec: FeatureSpec | str | os.PathLike | Mapping | None) -> FeatureSpec | None:
    if spec is None or isinstance(spec, FeatureSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return FeatureSpec.from_yaml(spec)
    return FeatureSpec.from_dict(spec)


class EHRVectord(MapTransform):
    """Raw EHR values -> float32 vector of normalised values and missing-value indicators.

    Args:
        keys: keys whose values are dicts of raw values (or sequences in spec order).
        spec: a :class:`FeatureSpec`, the path of its YAML file, or its parsed content.
        imputed_postfix: the imputed feature names go to ``f"{key}_{imputed_postfix}"`` as a
            comma-separated string ("" when nothing was imputed).
        from_item: take the raw values from the data dict itself (a flat CSV row as read by
            :func:`read_ehr_csv`, feature names as keys) and write the vector to ``keys``.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spec: FeatureSpec | str | os.PathLike | Mapping,
        imputed_postfix: str = "imputed",
        from_item: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spec = _as_spec(spec)
        self.imputed_postfix = imputed_postfix
        self.from_item = from_item

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys if self.from_item else self.key_iterator(d):
            vector, imputed = self.spec.vectorise(data if self.from_item else d[key])
            d[key] = torch.from_numpy(vector)
            d[f"{key}_{self.imputed_postfix}"] = ",".join(imputed)
        return d


def read_ehr_csv(
    path: str | os.PathLike,
    spec: FeatureSpec | str | os.PathLike | Mapping | None = None,
    required_columns: Iterable[str] = (),
) -> list[dict[str, str]]:
    """Read an encounter CSV after checking its columns (see the module docstring).

    Args:
        path: the CSV file (UTF-8, a byte-order mark is fine; comma separated).
        spec: feature spec whose feature names must be columns (or None).
        required_columns: further columns that must be present (image path, outcomes, ...).

    Returns:
        one dict per row, column name -> cell text (empty cells as "").
    """
    path = Path(path)
    spec = _as_spec(spec)
    if not path.is_file():
        raise InputDataError(path, "CSV file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputDataError(path, "the CSV file is empty (no header row)")
            columns = [c.strip() for c in header]
            duplicates = sorted({c for c in columns if columns.count(c) > 1 and c})
            if duplicates:
                raise InputDataError(path, f"duplicate column(s) in the header: {', '.join(duplicates)}")
            wanted = list(dict.fromkeys([*(spec.names if spec else []), *required_columns]))
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise InputDataError(
                    path,
                    f"missing column{'s' * (len(missing) > 1)} {', '.join(repr(c) for c in missing)}; "
                    f"the CSV has: {', '.join(columns)}",
                )
            rows = []
            for line_no, cells in enumerate(reader, start=2):
                if not cells or all(not c.strip() for c in cells):
                    continue  # blank line
                if len(cells) > len(columns):
                    raise InputDataError(
                        path, f"line {line_no} has {len(cells)} fields, the header has {len(columns)}"
                    )
                cells = cells + [""] * (len(columns) - len(cells))
                rows.append({c: v.strip() for c, v in zip(columns, cells)})
    except UnicodeDecodeError as e:
        raise InputDataError(path, f"not a UTF-8 text CSV: {e}") from e
    except csv.Error as e:
        raise InputDataError(path, f"malformed CSV: {e}") from e
    return rows
