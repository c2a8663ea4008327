"""What the X-ray room adds to a chest film besides the patient: collimation, side markers, text, leads, grid lines.

Real frontal chest films carry marks that say nothing about the lungs: the lead "R" the radiographer lays on
the cassette (about two in three of the ChestXRay2017 films, counted on 32 drawn at random), burnt-in text
(time, tube voltage, "A-P"; about one in ten), ECG electrodes and their wires, tubes (about one in three),
the straight edges of the collimator blades and, where a grid is used, its fine lines. A classifier trained on
films without them meets them first on real patients, so the transfer experiment (issue #20) draws them
on the synthetic films, as SyntheX randomises everything that is not the anatomy.

``dress_film`` works in image space on the processed film (bone bright, values in [0, 1]), after the
detector and display model of ``common.synthetic.drr`` and before the film is written. Every probability in
``DEFAULT_FILM`` is 0, so the generators' defaults render the films they always did; the experiment configs
turn the marks on (``render.film`` of ``common.synthetic.cxr``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from common.synthetic.config import draw_uniform

__all__ = ["DEFAULT_FILM", "dress_film", "film_enabled"]

DEFAULT_FILM: dict[str, Any] = {
    # chance per film of each mark (0 = never: the default films are unchanged)
    "collimation_probability": 0.0,  # collimator blades on one to four sides
    "marker_probability": 0.0,  # the lead side marker ("R" mostly, at the patient's right = the viewer's left)
    "text_probability": 0.0,  # burnt-in annotation: a time, the tube voltage, the projection
    "lead_probability": 0.0,  # ECG electrodes with their wires, or a tube, across the chest
    "grid_probability": 0.0,  # the fine lines of a stationary anti-scatter grid
    # how they look
    "collimation_inset": [0.0, 0.12],  # each blade's edge, fraction of the film from its side
    "marker_height": [0.04, 0.09],  # fraction of the film's height
    "text_height": [0.025, 0.045],
    "electrodes": [1, 4],  # electrodes per film with leads (inclusive)
    "electrode_radius": [0.015, 0.03],  # fraction of the film's width
    "grid_period_px": [2.2, 4.5],  # line spacing on the written film
    "grid_amplitude": [0.01, 0.04],  # grey-level swing of the lines
}

_TEXTS = ("AP", "A-P", "PA", "SUPINE", "PORTABLE", "ERECT")


def film_enabled(cfg: Mapping[str, Any]) -> bool:
    """Whether any mark of ``cfg`` (a merged ``DEFAULT_FILM``) can be drawn."""
    return any(float(v) > 0 for k, v in cfg.items() if k.endswith("_probability"))


def _text_mask(shape: tuple[int, int], text: str, height_px: float, top_left: tuple[float, float],
               boxed: bool = False) -> np.ndarray:
    """Anti-aliased coverage (0..1) of ``text`` written ``height_px`` high with its corner at ``top_left``."""
    rows, cols = shape
    k = 4  # drawn at four times the size and reduced: letters a few pixels high stay legible
    canvas = Image.new("L", (cols * k, rows * k), 0)
    draw = ImageDraw.Draw(canvas)
    size = max(8, int(round(height_px * k)))
    font = ImageFont.load_default(size=size)  # Pillow's own font: no file, no download
    x, y = float(top_left[1]) * k, float(top_left[0]) * k
    stroke = max(1, size // 12)  # lead letters are bold
    draw.text((x, y), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    if boxed:  # a marker in its plastic holder with a lead frame
        left, top, right, bottom = draw.textbbox((x, y), text, font=font, stroke_width=stroke)
        pad = 0.2 * size
        draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), outline=255, width=max(1, size // 8))
    return np.asarray(canvas.resize((cols, rows), Image.BOX), dtype=np.float32) / 255.0


def _collimate(image: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, Any]) -> np.ndarray:
    rows, cols = image.shape
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float32)
    # outside the field: unexposed (bright, as the raw detector shows it) or blacked out by the workstation
    outside_value = draw_uniform(rng, (0.8, 1.0)) if rng.random() < 0.5 else draw_uniform(rng, (0.0, 0.08))
    outside = np.zeros(image.shape, dtype=bool)
    sides = rng.permutation(4)[: int(rng.integers(1, 5))]
    for side in sides:
        inset = draw_uniform(rng, cfg["collimation_inset"])
        slope = np.tan(np.deg2rad(draw_uniform(rng, (-2.0, 2.0))))  # a blade a little off the film's axes
        if side == 0:
            outside |= r < inset * rows + slope * (c - cols / 2)
        elif side == 1:
            outside |= r > (1 - inset) * rows - 1 + slope * (c - cols / 2)
        elif side == 2:
            outside |= c < inset * cols + slope * (r - rows / 2)
        else:
            outside |= c > (1 - inset) * cols - 1 + slope * (r - rows / 2)
    edge = ndimage.gaussian_filter(outside.astype(np.float32), 0.7)  # the penumbra of the blade
    return image * (1 - edge) + np.float32(outside_value) * edge


def _marker(image: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, Any]) -> np.ndarray:
    rows, cols = image.shape
    height = draw_uniform(rng, cfg["marker_height"]) * rows
    right_side = rng.random() < 0.85  # the patient's right, on the viewer's left, is what most rooms mark
    letter = "R" if right_side else "L"
    if rng.random() < 0.15:
        letter = f"{letter} {rng.choice(['AP', 'A-P', 'PA'])}" if right_side else letter
    row = draw_uniform(rng, (0.01, 0.25)) * rows
    col = (draw_uniform(rng, (0.01, 0.15)) if right_side else draw_uniform(rng, (0.75, 0.9))) * cols
    mask = _text_mask(image.shape, letter, height, (row, col), boxed=rng.random() < 0.2)
    value = np.float32(draw_uniform(rng, (0.85, 1.0)))
    return image * (1 - mask) + value * mask


def _text(image: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, Any]) -> np.ndarray:
    rows, cols = image.shape
    for _ in range(int(rng.integers(1, 3))):
        kind = rng.integers(3)
        if kind == 0:
            text = f"{rng.integers(24):02d}:{rng.integers(60):02d}:{rng.integers(60):02d}"
        elif kind == 1:
            text = f"KV{rng.integers(55, 90)}"
        else:
            text = str(rng.choice(_TEXTS))
        height = draw_uniform(rng, cfg["text_height"]) * rows
        row = (draw_uniform(rng, (0.01, 0.08)) if rng.random() < 0.5 else draw_uniform(rng, (0.88, 0.95))) * rows
        col = draw_uniform(rng, (0.02, 0.75)) * cols
        mask = _text_mask(image.shape, text, height, (row, col))
        image = image * (1 - mask) + np.float32(draw_uniform(rng, (0.85, 1.0))) * mask
    return image


def _leads(image: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, Any]) -> np.ndarray:
    """ECG electrodes (a bright disc with a metal snap) on the chest wall, each with a wire to the film's edge."""
    rows, cols = image.shape
    canvas = Image.new("L", (cols * 2, rows * 2), 0)  # drawn at twice the size, then reduced: smooth edges
    draw = ImageDraw.Draw(canvas)
    lo, hi = (int(v) for v in cfg["electrodes"])
    for _ in range(int(rng.integers(lo, hi + 1))):
        cy, cx = draw_uniform(rng, (0.05, 0.8)) * rows * 2, draw_uniform(rng, (0.05, 0.95)) * cols * 2
        radius = draw_uniform(rng, cfg["electrode_radius"]) * cols * 2
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=150)
        draw.ellipse((cx - radius / 3, cy - radius / 3, cx + radius / 3, cy + radius / 3), fill=255)
        # the wire: a quadratic curve from the electrode to a point on the nearer side or the top
        end = (draw_uniform(rng, (0.0, 0.3)) * rows * 2, 0.0 if cx < cols else cols * 2.0)
        if rng.random() < 0.4:
            end = (0.0, draw_uniform(rng, (0.1, 0.9)) * cols * 2)
        bend = (draw_uniform(rng, (0.0, 1.0)) * rows * 2, draw_uniform(rng, (0.0, 1.0)) * cols * 2)
        t = np.linspace(0.0, 1.0, 64)[:, None]
        points = (1 - t) ** 2 * np.array([cy, cx]) + 2 * (1 - t) * t * np.array(bend) + t**2 * np.array(end)
        draw.line([(float(p[1]), float(p[0])) for p in points], fill=int(draw_uniform(rng, (90, 200))),
                  width=max(1, int(round(rows / 120))))
    mask = np.asarray(canvas.resize((cols, rows), Image.BILINEAR), dtype=np.float32) / 255.0
    return np.clip(image + mask * (1.0 - image) * np.float32(draw_uniform(rng, (0.6, 1.0))), 0.0, 1.0)


def _grid(image: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, Any]) -> np.ndarray:
    period = draw_uniform(rng, cfg["grid_period_px"])
    phase = draw_uniform(rng, (0.0, 2 * np.pi))
    lines = np.sin(2 * np.pi * np.arange(image.shape[1], dtype=np.float32) / period + phase)
    amplitude = draw_uniform(rng, cfg["grid_amplitude"])
    return image + np.float32(amplitude) * lines[None, :]


def dress_film(image: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, Any]) -> np.ndarray:
    """Add the room's marks to a processed film, each with its probability in ``cfg``.

    Args:
        image: (rows, columns) float film in [0, 1], bone bright, the patient's right on the viewer's left.
        rng: random generator of this film's marks (nothing else should draw from it).
        cfg: ``DEFAULT_FILM`` with the user's values on top.

    Returns:
        the film with the marks, float32 in [0, 1], the same shape.
    """
    out = np.asarray(image, dtype=np.float32)  # every mark returns a new array: the caller's film is left alone
    steps = (("grid_probability", _grid), ("collimation_probability", _collimate), ("lead_probability", _leads),
             ("marker_probability", _marker), ("text_probability", _text))
    draws = rng.random(len(steps))  # decided first: one mark's probability does not change which others a film gets
    for (key, step), draw in zip(steps, draws):
        if draw < float(cfg[key]):
            out = step(out, rng, cfg)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
