"""Configuration, seeding, progress and description helpers shared by every synthetic-data generator.

A generator keeps its defaults in a nested dictionary. A user's YAML file (or dictionary) overrides any
subset of it; a key the generator does not know is an error naming the key and the file, so a typo never
silently falls back to the default.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from common.errors import InputDataError
from common.io.atomic import atomic_write_text

T = TypeVar("T")

__all__ = ["load_config", "merge_config", "make_rng", "child_rng", "draw_uniform", "progress", "write_dataset_yaml", "to_builtin"]


def merge_config(defaults: Mapping[str, Any], override: Mapping[str, Any] | None, source: str = "config") -> dict:
    """Return a deep copy of ``defaults`` with ``override`` applied on top.

    Nested dictionaries are merged key by key; any other value replaces the default. Keys of ``override``
    that ``defaults`` does not have are rejected, except below a default that is ``None`` or an empty
    dictionary (free-form sections).

    Args:
        defaults: the generator's default configuration.
        override: the user's values (may be ``None``).
        source: where ``override`` came from, used in error messages.

    Returns:
        the merged configuration (a new dictionary).

    Raises:
        InputDataError: an unknown key, or a section given as a scalar.
    """
    merged = copy.deepcopy(dict(defaults))
    if not override:
        return merged

    def _merge(base: dict, new: Mapping[str, Any], prefix: str) -> None:
        for key, value in new.items():
            name = f"{prefix}{key}"
            if key not in base:
                known = ", ".join(sorted(map(str, base))) or "none"
                raise InputDataError(source, f"unknown key {name!r} (known keys here: {known})")
            current = base[key]
            if isinstance(current, dict) and current:
                if not isinstance(value, Mapping):
                    raise InputDataError(source, f"{name!r} must be a mapping, got {type(value).__name__}")
                _merge(current, value, f"{name}.")
            else:
                base[key] = copy.deepcopy(value)

    _merge(merged, override, "")
    return merged


def load_config(
    defaults: Mapping[str, Any], config: str | os.PathLike | Mapping[str, Any] | None = None
) -> dict:
    """Load a generator configuration: ``defaults`` overridden by a YAML file or a dictionary.

    Args:
        defaults: the generator's default configuration.
        config: ``None`` (defaults only), a path to a YAML file, or a dictionary of overrides.

    Returns:
        the merged configuration.

    Raises:
        InputDataError: the file is missing or not YAML, its top level is not a mapping, or it has a key
            the generator does not know.
    """
    if config is None:
        return merge_config(defaults, None)
    if isinstance(config, Mapping):
        return merge_config(defaults, config, source="config")
    path = Path(config)
    if not path.is_file():
        raise InputDataError(path, "generator config file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputDataError(path, f"not a valid YAML file ({err.__class__.__name__}: {err})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise InputDataError(path, f"the top level must be a mapping of keys, got {type(loaded).__name__}")
    return merge_config(defaults, loaded, source=str(path))


def draw_uniform(rng: np.random.Generator, lo_hi: Any) -> float:
    """One number drawn uniformly from a config range ``[low, high]`` (the generators' per-image settings).

    Args:
        rng: the generator to draw from (one draw, whatever the range).
        lo_hi: the range, two numbers.

    Returns:
        the number, a Python float.
    """
    lo, hi = (float(v) for v in lo_hi)
    return float(rng.uniform(lo, hi))


def make_rng(seed: int, *stream: int | str) -> np.random.Generator:
    """A NumPy generator determined by ``seed`` and an optional stream path.

    ``make_rng(seed, "case", 3)`` gives every case its own independent stream, so changing the number of
    cases does not change the cases already there, and cases can be made in any order.

    Args:
        seed: the user's seed (a non-negative integer).
        stream: names or numbers identifying a sub-stream.

    Returns:
        a ``numpy.random.Generator`` (PCG64).
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    words = [int(seed)]
    for part in stream:
        if isinstance(part, str):
            # a stable hash of the name (Python's hash() is salted per process)
            words.append(int.from_bytes(hashlib.sha256(part.encode("utf-8")).digest()[:8], "little"))
        else:
            words.append(int(part))
    return np.random.default_rng(np.random.SeedSequence(words))


def child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator spawned from ``rng`` (advances ``rng`` deterministically)."""
    return np.random.default_rng(rng.integers(0, 2**63 - 1, dtype=np.int64))


def progress(iterable: Iterable[T], desc: str, total: int | None = None, disable: bool | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm progress bar on stderr.

    Args:
        iterable: the items.
        desc: label shown before the bar.
        total: number of items when ``iterable`` has no length.
        disable: ``None`` shows the bar unless the environment variable ``SYNTH_NO_PROGRESS`` is set.

    Returns:
        an iterator over the same items.
    """
    from tqdm.auto import tqdm

    if disable is None:
        disable = bool(os.environ.get("SYNTH_NO_PROGRESS"))
    return iter(tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True))


def to_builtin(obj: Any) -> Any:
    """Convert NumPy scalars/arrays, tuples and paths inside ``obj`` to plain YAML/JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_builtin(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return float(round(obj, 6))
    return obj


def write_dataset_yaml(out_dir: str | os.PathLike, description: Mapping[str, Any]) -> Path:
    """Write ``dataset.yaml`` (what a generator made) into ``out_dir`` atomically.

    Args:
        out_dir: the data set folder.
        description: generator name, seed, configuration, counts, file lists, ... (NumPy types allowed).

    Returns:
        the path of ``dataset.yaml``.
    """
    text = yaml.safe_dump(to_builtin(description), sort_keys=False, default_flow_style=None, width=110)
    return atomic_write_text(Path(out_dir) / "dataset.yaml", text)
