"""Seeded, config-driven generators of synthetic data sets in the layouts real public data comes in.

Each generator has the signature ``generate_*(out_dir, config=None, seed=0) -> Path``, writes a
``dataset.yaml`` describing what it made, and gives identical bytes for identical seed and config.
``python scripts/make_synthetic.py <task> --out DIR`` dispatches to them.
"""

from __future__ import annotations

from typing import Any

from common.synthetic.config import load_config, make_rng, merge_config, progress, write_dataset_yaml

__all__ = ["load_config", "merge_config", "make_rng", "progress", "write_dataset_yaml", "benchmark_ct"]


def benchmark_ct(n_scans: int = 20, spacing: float = 1.5, num_workers: int = 2) -> dict[str, Any]:
    """Seconds to generate ``n_scans`` full-size chest CTs at ``spacing`` mm (see
    ``common.synthetic.ct_phantom.benchmark_ct``)."""
    from common.synthetic.ct_phantom import benchmark_ct as _benchmark_ct

    return _benchmark_ct(n_scans=n_scans, spacing=spacing, num_workers=num_workers)
