"""Seeded, config-driven generators of synthetic data sets written in the layouts real public data uses.

Modules:
    drr:  digitally reconstructed radiographs from any CT volume (``project_drr``, ``project_label``).
    cxr:  chest X-rays projected from CT phantoms, pneumonia patterns, Kermany ChestXRay2017 layout.
    oct:  retinal OCT B-scans (CNV, DME, DRUSEN, NORMAL), Kermany OCT2017 layout.
"""

from __future__ import annotations

from typing import Any


def benchmark_xray(n_images: int = 300, size: int = 256, seed: int = 0) -> dict[str, Any]:
    """Time the 3-class pneumonia CXR set (see ``common.synthetic.cxr.benchmark_xray``)."""
    from common.synthetic.cxr import benchmark_xray as _benchmark_xray

    return _benchmark_xray(n_images=n_images, size=size, seed=seed)
