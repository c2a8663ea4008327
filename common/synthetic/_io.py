"""Helpers shared by the 2D synthetic generators: deterministic JPEG/PNG writing and parallel rendering."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.io.atomic import atomic_write_bytes


def save_gray_jpeg(path: str | os.PathLike, image: np.ndarray, quality: int = 90) -> Path:
    """Write an 8-bit grayscale JPEG atomically (Pillow's encoder is deterministic for equal arrays)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(
        buf, format="JPEG", quality=int(quality), optimize=False
    )
    return atomic_write_bytes(path, buf.getvalue())


def save_mask_png(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a binary mask as an 8-bit PNG with values 0 and 255, atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def parallel_map(func: Any, items: list, num_workers: int, desc: str) -> list:
    """``[func(x) for x in items]`` with a progress bar, in ``num_workers`` processes when > 1.

    The results and their order do not depend on ``num_workers`` as long as every item carries its own
    seed. Workers are forked where the platform allows, so caches built before the call are shared.
    """
    from common.synthetic.config import progress

    num_workers = int(num_workers)
    if num_workers <= 1 or len(items) < 2:
        return [func(item) for item in progress(items, desc=desc)]
    import multiprocessing

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ctx.Pool(num_workers) as pool:
        return list(progress(pool.imap(func, items, chunksize=4), desc=desc, total=len(items)))
