"""Writing helpers shared by the 2D synthetic generators (configs, JPEG/PNG images, dataset.yaml)."""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.io.atomic import atomic_write_bytes, atomic_write_text


def deep_update(base: dict, override: dict) -> dict:
    """Return a deep copy of ``base`` with ``override`` merged in (nested dicts merged key by key)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_checked(defaults: dict, override: dict | None, source: str = "config") -> dict:
    """``deep_update`` that rejects keys the defaults do not have (except below an empty-dict default).

    Raises:
        InputDataError: an unknown key (named with its full dotted path), or a section given as a scalar.
    """
    from common.errors import InputDataError

    def _check(base: dict, new: dict, prefix: str) -> None:
        for key, value in new.items():
            name = f"{prefix}{key}"
            if key not in base:
                raise InputDataError(
                    source, f"unknown key {name!r} (known keys here: {', '.join(sorted(base))})"
                )
            if isinstance(base[key], dict) and base[key]:
                if not isinstance(value, dict):
                    raise InputDataError(source, f"{name!r} must be a mapping, got {type(value).__name__}")
                _check(base[key], value, f"{name}.")

    _check(defaults, override or {}, "")
    return deep_update(defaults, override or {})


def load_config(defaults: dict, config: str | os.PathLike | dict | None) -> dict:
    """Merge a YAML file (or dict) over a generator's defaults; an unknown key is an error naming it."""
    import yaml

    from common.errors import InputDataError

    if config is None:
        return copy.deepcopy(defaults)
    if isinstance(config, dict):
        return merge_checked(defaults, config, "config")
    path = Path(config)
    if not path.is_file():
        raise InputDataError(path, "generator config file not found")
    try:
        override = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputDataError(path, f"not a valid YAML file ({type(err).__name__})") from None
    if not isinstance(override, dict):
        raise InputDataError(path, "a generator config must be a YAML mapping of keys")
    return merge_checked(defaults, override, str(path))


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


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_dataset_yaml(path: str | os.PathLike, content: dict) -> Path:
    """Write the ``dataset.yaml`` that describes a generated data set (keys kept in insertion order)."""
    import yaml

    return atomic_write_text(path, yaml.safe_dump(_plain(content), sort_keys=False))
