"""Store a trained checkpoint as a bundle's shipped ``models/model.pt`` and record it.

    python scripts/ship_weights.py --bundle bundles/<name> --checkpoint runs/.../model_final.pt \
        [--provenance provenance.json] [--float16 true]

What it does, in one place for every bundle:

* reads the checkpoint with ``torch.load(weights_only=True)`` (any container ``read_state_dict`` knows),
  checks that it fits the network ``configs/inference.yaml`` builds (every tensor by name and shape),
* stores the state dict with float16 floating-point tensors (``--float16 false`` keeps float32) under a
  temporary name and renames it onto ``models/model.pt``, so a crash never leaves half a file,
* writes its sha256 and size into ``configs/metadata.json`` (``weights``; with the entries of
  ``--provenance``, a JSON object such as ``{"data": ..., "command": ..., "commit": ..., "training_time":
  ..., "hardware": ...}``) and ``large_files.yml`` (as model-zoo bundles list their large files; no
  download URL, the file is in the repository),
* refuses a file over 25 MB (model-zoo's limit).

``scripts/verify_bundles.py`` then checks the sha256 and size, and the bundle's inference refuses a
``models/model.pt`` whose sha256 differs from the recorded one. The model card's provenance is written
by hand from the same facts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_BYTES = 25 * 1024 * 1024  # MONAI model-zoo's limit for a file in the repository


def large_files_yaml(digest: str, path: str = "models/model.pt") -> str:
    """The bundle's ``large_files.yml`` listing its shipped weights (model-zoo's keys)."""
    return (
        "# the bundle's large files, as MONAI model-zoo bundles list them (no download URL: the file is in the repository)\n"
        f'large_files:\n  - path: "{path}"\n    hash_type: "sha256"\n    hash_val: "{digest}"\n'
    )


def ship_weights(
    bundle: str | os.PathLike,
    checkpoint: str | os.PathLike,
    provenance: dict | None = None,
    float16: bool = True,
) -> dict:
    """Store ``checkpoint`` as ``<bundle>/models/model.pt`` and record its sha256, size and provenance.

    Args:
        bundle: the bundle folder.
        checkpoint: the trained weights (a state dict, or a container such as ``{"model": state_dict}``).
        provenance: entries of ``metadata.json``'s ``weights`` (trained_on, data, command, commit,
            training_time, hardware, ...). They replace the previous file's record, which is kept only when
            the stored file is byte-identical to it; ``tests/test_shipped_weights.py`` fails on a record
            without them.
        float16: store floating-point tensors as float16 (inference casts them back to the network's dtype).

    Returns:
        ``{"file", "sha256", "size_bytes"}``.

    Raises:
        SystemExit: the checkpoint does not fit the bundle's network, or the file would exceed 25 MB.
    """
    import torch
    from monai.bundle import ConfigParser

    from common.bundle_utils import read_state_dict, sha256_file, weights_misfit
    from common.io.atomic import atomic_write_text

    bundle = Path(bundle)
    state = read_state_dict(checkpoint)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    own = network.state_dict()
    state = {k: v for k, v in state.items() if k in own}  # a trainer's extra entries are not weights
    misfit = weights_misfit(state, network)
    if misfit:
        raise SystemExit(f"{checkpoint}: does not fit the network of {bundle}/configs/inference.yaml ({misfit})")
    state = {k: state[k] for k in own}  # the network's order, as its state_dict writes it
    if float16:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    target = bundle / "models" / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".model.pt.tmp")
    torch.save(state, tmp)
    if tmp.stat().st_size > MAX_BYTES:
        size = tmp.stat().st_size
        tmp.unlink()
        raise SystemExit(f"{checkpoint}: {size / 2**20:.1f} MB as stored, over model-zoo's 25 MB limit")
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    digest, size = sha256_file(tmp), tmp.stat().st_size
    previous = meta.get("weights") or {}
    # the record describes this file: another file keeps nothing of the previous one's provenance
    weights = dict(previous) if previous.get("sha256") == digest else {}
    weights.update(provenance or {})
    weights.update({
        "file": "models/model.pt", "sha256": digest, "size_bytes": size,
        "format": f"PyTorch state dict, {'float16' if float16 else 'float32'} storage, torch.load(weights_only=True)",
    })
    meta["weights"] = weights
    # the record first, then the file: a crash in between leaves the old file refused (its sha256 no longer
    # matches), never new weights that pass as the old ones
    atomic_write_text(meta_file, json.dumps(meta, indent=4) + "\n")
    atomic_write_text(bundle / "large_files.yml", large_files_yaml(digest))
    os.replace(tmp, target)
    return {"file": str(target), "sha256": digest, "size_bytes": size}


def main(bundle: str, checkpoint: str, provenance: str | None = None, float16: bool = True) -> None:
    """Ship ``checkpoint`` as ``bundle``'s weights; ``provenance`` is a JSON file of further metadata entries."""
    extra = json.loads(Path(provenance).read_text()) if provenance else None
    result = ship_weights(bundle, checkpoint, extra, float16)
    print(f"shipped {result['file']}: {result['size_bytes']} bytes, sha256 {result['sha256']}")


if __name__ == "__main__":
    fire.Fire(main)
