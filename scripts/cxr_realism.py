"""How close synthetic pediatric chest X-rays look to real ones: lung-field brightness and fine texture.

    python scripts/cxr_realism.py --real ../shared/data/chest_xray2017_train224 [--n_per_class 150] [--seed 0] \
        [--synthetic_config docs/experiments/pneumonia_synthex.yaml]

Both sets are measured as the pneumonia bundle's network sees them: squashed to 192 x 192 and z-scored per
film (``NormalizeIntensityd``). The real films have no lung masks, so both are measured in the same two fixed
boxes where a frontal child's film has lung (rows 31-62 %, columns 18-36 % and 64-82 % of the film):

- **lung mean**: the boxes' mean z-score (how dark the lung fields are against the rest of the film);
- **fine texture**: the standard deviation of the boxes after subtracting a 3-pixel Gaussian blur: ribs,
  vessel markings, edges and noise, what a network at this size sees first.

Per class (NORMAL, BACTERIAL, VIRAL) it prints the median over the films of the real and of the synthetic set
(``--n_per_class`` films of each, the real ones drawn with ``--seed``; the synthetic ones rendered with the
generator's ``render`` settings from ``--synthetic_config``, severity uniform in the class's range). The
settings of docs/experiments/pneumonia_synthex_bone.yaml were chosen with it (docs/synthetic_data.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import fire
import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: this checkout's `common`

SIZE = 192  # the pneumonia bundle's image_size
ROWS = (0.31, 0.62)
COLUMNS = ((0.18, 0.36), (0.64, 0.82))
CLASSES = {"NORMAL": "none", "BACTERIAL": "lobar", "VIRAL": "interstitial"}


def lung_measures(image: np.ndarray) -> tuple[float, float]:
    """(lung mean, fine texture) of one film, as the module docstring defines them.

    Args:
        image: (rows, columns) grey film, any size and range.

    Returns:
        the mean z-score and the high-pass standard deviation in the lung boxes.
    """
    film = Image.fromarray(np.asarray(image, dtype=np.float32)).resize((SIZE, SIZE), Image.BILINEAR)
    z = np.asarray(film, dtype=np.float64)
    z = (z - z.mean()) / (z.std() + 1e-6)
    r0, r1 = (int(round(f * SIZE)) for f in ROWS)
    boxes = np.concatenate([z[r0:r1, int(round(a * SIZE)) : int(round(b * SIZE))] for a, b in COLUMNS], axis=1)
    return float(boxes.mean()), float((boxes - ndimage.gaussian_filter(boxes, 3.0)).std())


def _real_files(real: Path, rng: np.random.Generator, n: int) -> dict[str, list[str]]:
    """Up to ``n`` films per class of a ChestXRay2017 folder (every split found), read as the bundles read it."""
    from common.data.kermany import locate_splits, scan_folder
    from common.errors import InputDataError

    try:
        entries = [e for folder in locate_splits(real, "cxr").values() for e in scan_folder(folder, "cxr")]
    except InputDataError as err:
        raise SystemExit(f"no ChestXRay2017 films: {err}") from None
    by_class = {c: [e["image"] for e in entries if e["class_name"] == c] for c in CLASSES}
    if not all(by_class.values()):
        raise SystemExit(f"{real}: no ChestXRay2017 films of every class (NORMAL/, *_bacteria_*, *_virus_*) found")
    return {c: [f[i] for i in rng.choice(len(f), min(n, len(f)), replace=False)] for c, f in by_class.items()}


def main(real: str = "../shared/data/chest_xray2017_train224", n_per_class: int = 150, seed: int = 0,
         synthetic_config: str = "docs/experiments/pneumonia_synthex.yaml") -> dict[str, Any]:
    """Print and return the medians per class of the real and the synthetic films.

    Args:
        real: a ChestXRay2017 folder (``NORMAL/`` and ``PNEUMONIA/`` somewhere below it).
        n_per_class: films per class and set.
        seed: draws the real films and renders the synthetic ones.
        synthetic_config: a ``pneumonia_cxr`` data set config whose ``render`` and ``severity`` are used.

    Returns:
        ``{"real" | "synthetic": {class: {"lung_mean", "fine_texture"}}}``.
    """
    from common.synthetic.config import load_config
    from common.synthetic.cxr import DEFAULT_CONFIG, render_cxr

    cfg = load_config(DEFAULT_CONFIG, synthetic_config)
    rng = np.random.default_rng(seed)
    measured: dict[str, dict[str, list[tuple[float, float]]]] = {"real": {}, "synthetic": {}}
    for cls, files in _real_files(Path(real), rng, n_per_class).items():
        measured["real"][cls] = [lung_measures(np.asarray(Image.open(f).convert("L"))) for f in files]
    for cls, pattern in CLASSES.items():
        lo, hi = cfg["severity"].get(cls, (0.0, 0.0))
        measured["synthetic"][cls] = [
            lung_measures(render_cxr(rng, int(cfg["image_size"]), bool(cfg["pediatric"]), pattern,
                                     float(rng.uniform(lo, hi)), cfg["render"])["image"])
            for _ in range(n_per_class)
        ]
    out = {
        name: {cls: dict(zip(("lung_mean", "fine_texture"), np.median(np.asarray(v), axis=0).round(3).tolist()))
               for cls, v in sets.items()}
        for name, sets in measured.items()
    }
    print(f"medians over {n_per_class} films per class; synthetic: {synthetic_config}")
    print("| class | lung mean, real | lung mean, synthetic | fine texture, real | fine texture, synthetic |")
    print("|---|---|---|---|---|")
    for cls in CLASSES:
        r, s = out["real"][cls], out["synthetic"][cls]
        print(f"| {cls} | {r['lung_mean']:+.2f} | {s['lung_mean']:+.2f} | {r['fine_texture']:.3f} | {s['fine_texture']:.3f} |")
    return out


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)  # the table above is the output
