"""Transforms of the oxygen-risk bundle that the shared ``common.transforms`` do not cover."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform


class OptionalImaged(MapTransform):
    """Load and letterbox the CXR when there is one; an all-zero image when there is none.

    The network reads an all-zero image as "no image" (its availability flag is 0), so encounters
    without a radiograph (an empty ``image`` cell) and EHR-only sites (``enabled=False``: the image is
    never read) run through the same pipeline and the same model.

    Args:
        keys: image key(s) holding a file path.
        loader: transforms applied to the item when the image exists (e.g. ``LoadRadiographd`` then
            ``LetterboxResized``); a list is composed.
        size: side of the square zero image used when there is no image.
        enabled: False never reads images (EHR-only mode).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, loader: Sequence[Callable] | Callable, size: int,
                 enabled: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = Compose(list(loader)) if isinstance(loader, Sequence) else loader
        self.size = int(size)
        self.enabled = bool(enabled)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = [k for k in self.key_iterator(d) if self.enabled and isinstance(d[k], str) and d[k].strip()]
        for key in self.key_iterator(d):
            if key not in present:
                d[key] = torch.zeros((1, self.size, self.size), dtype=torch.float32)
        if present:
            d = dict(self.loader(d))
        return d
