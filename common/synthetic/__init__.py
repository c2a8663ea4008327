"""Seeded, config-driven generators of synthetic data sets in the layouts real public data comes in.

Each generator has the signature ``generate_*(out_dir, config=None, seed=0) -> Path``, writes a
``dataset.yaml`` describing what it made, and gives identical bytes for identical seed and config.
``python scripts/make_synthetic.py <task> --out DIR`` dispatches to them.

Modules:
    ct_phantom:  chest CT phantoms with lung labels (``make_chest_phantom``, ``generate_lung_ct``).
    drr:         digitally reconstructed radiographs from any CT volume (``project_drr``, ``project_label``).
    cxr:         chest X-rays projected from CT phantoms, pneumonia patterns, Kermany ChestXRay2017 layout.
    oct:         retinal OCT B-scans (CNV, DME, DRUSEN, NORMAL), Kermany OCT2017 layout.
"""

from __future__ import annotations

from typing import Any

from common.synthetic.config import load_config, make_rng, merge_config, progress, write_dataset_yaml

__all__ = [
    "load_config",
    "merge_config",
    "make_rng",
    "progress",
    "write_dataset_yaml",
    "benchmark_ct",
    "benchmark_xray",
]


def benchmark_ct(n_scans: int = 20, spacing: float = 1.5, num_workers: int = 2) -> dict[str, Any]:
    """Seconds to generate ``n_scans`` full-size chest CTs at ``spacing`` mm (see
    ``common.synthetic.ct_phantom.benchmark_ct``)."""
    from common.synthetic.ct_phantom import benchmark_ct as _benchmark_ct

    return _benchmark_ct(n_scans=n_scans, spacing=spacing, num_workers=num_workers)


def benchmark_xray(
    n_images: int = 300, size: int = 256, seed: int = 0, num_workers: int = 2
) -> dict[str, Any]:
    """Seconds to generate the 3-class pneumonia CXR set of ``n_images`` at ``size`` px, files included
    (see ``common.synthetic.cxr.benchmark_xray``)."""
    from common.synthetic.cxr import benchmark_xray as _benchmark_xray

    return _benchmark_xray(n_images=n_images, size=size, seed=seed, num_workers=num_workers)
