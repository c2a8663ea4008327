"""Re-estimate the EHR feature spec (imputation default, mean, std) on a site's own training data.

    python -c "from common.oxygen.features import estimate_spec; estimate_spec('DATA/encounters.csv', \\
        'bundles/cxr_ehr_oxygen_risk/configs/ehr_features.yaml', 'my_ehr_features.yaml')"

Units and plausible ranges are kept (they describe what a value means); only values inside the range
count. A feature with fewer than ``min_values`` measured values keeps its old statistics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from common.data.oxygen_csv import read_encounters
from common.io.atomic import atomic_write_text
from common.transforms.ehr import FeatureSpec, parse_value


def estimate_spec(csv_path: str | os.PathLike, spec_path: str | os.PathLike, out_path: str | os.PathLike,
                  split: str | None = "train", min_values: int = 20) -> Path:
    """Write a copy of the feature spec with ``default`` (median), ``mean`` and ``std`` from ``csv_path``.

    Args:
        csv_path: the encounter CSV.
        spec_path: the bundle's feature spec YAML.
        out_path: the new spec YAML (point the bundle's configs at it, or replace ehr_features.yaml).
        split: rows of this split only (None: all rows).
        min_values: fewest in-range values needed to replace a feature's statistics.

    Returns:
        ``out_path``.
    """
    spec = FeatureSpec.from_yaml(spec_path)
    items = read_encounters(csv_path, spec.names, split=split)
    features = []
    for f in spec.features:
        values = np.array([v for v in (parse_value(i["ehr"].get(f.name)) for i in items)
                           if v is not None and f.min <= v <= f.max], dtype=np.float64)
        entry = {"name": f.name, "unit": f.unit, "min": f.min, "max": f.max, "default": f.default,
                 "mean": f.mean, "std": f.std}
        if len(values) >= min_values:
            std = float(values.std())
            entry.update(default=float(np.clip(np.median(values), f.min, f.max)), mean=float(values.mean()),
                         std=std if std > 0 else f.std)
        entry = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()}
        if f.description:
            entry["description"] = f.description
        features.append(entry)
    header = f"# EHR feature spec re-estimated on {Path(csv_path).name} (split: {split or 'all'})\n"
    atomic_write_text(out_path, header + yaml.safe_dump({"features": features}, sort_keys=False))
    FeatureSpec.from_yaml(out_path)  # the result must be a valid spec
    return Path(out_path)
