"""The neck, shoulders, clavicles and arms of a chest film, which the chest CT phantoms do not reach.

A chest CT phantom (``common.synthetic.ct_phantom``) ends a few centimetres above the lung apices and has
no arms, so a film projected from it shows a straight-sided body under a flat band of soft tissue. A real
frontal chest film of a child shows the neck, the shoulders sloping from it, the clavicles crossing the lung
apices, the humeral heads and the arms: at the sides, or raised beside the head as children are often held
for the film. These are large, high-contrast shapes the classifier meets on every real film (issue #20's
side-by-side of real and synthetic films), so the transfer experiment can draw them.

They are drawn in the projection plane, as path lengths through simple solids (elliptic cylinders for the
neck and arms, capsules for the shoulders, hollow bone tubes for the clavicles and humeri, a sphere for each
humeral head), added to the base phantom's cached line integrals before any pose, lesion or detector model.
The lesions stay inside the lungs and the lung mask is untouched. ``DEFAULT_GIRDLE["probability"]`` is 0, so
the generators' defaults render the films they always did; the experiment configs turn it on
(``render.girdle`` of ``common.synthetic.cxr``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from common.synthetic.config import draw_uniform
from common.synthetic.drr import MU_SOFT_TISSUE_PER_MM, hu_to_mu

__all__ = ["DEFAULT_GIRDLE", "girdle_enabled", "add_shoulder_girdle"]

#: Sizes are fractions of the chest's width on the film (rib cage edge to edge, with its soft tissue).
DEFAULT_GIRDLE: dict[str, Any] = {
    "probability": 0.0,  # chance per base anatomy of a neck, shoulders, clavicles and arms (0 = never)
    "arms_up_probability": 0.5,  # of those, the share with the arms raised beside the head
    "neck_width": [0.30, 0.40],  # the neck's width
    "shoulder_span": [0.9, 1.0],  # acromion to acromion
    "shoulder_level": [-0.06, 0.02],  # height of the acromion below the lung apex (negative: above it)
    "shoulder_thickness": [0.18, 0.28],  # antero-posterior thickness of the shoulder at the acromion
    "clavicle_radius": [0.02, 0.028],  # half the clavicle's thickness
    "clavicle_drop": [0.05, 0.12],  # how much lower the sternal end is than the acromial end
    "humeral_head_radius": [0.035, 0.05],  # its ossified part (in young children mostly cartilage)
    "arm_radius": [0.11, 0.15],  # soft tissue of the upper arm
    "arm_angle_deg": [3.0, 20.0],  # arms down: away from the body; arms up: toward the head, from vertical
    "depth_ratio": [0.7, 0.9],  # antero-posterior / left-right thickness of the neck and arms
}

_HU_SOFT = 40.0
_HU_CORTEX = 1000.0
_HU_CANCELLOUS = 150.0


def girdle_enabled(cfg: Mapping[str, Any]) -> bool:
    """Whether ``cfg`` (a merged ``DEFAULT_GIRDLE``) can draw a girdle."""
    return float(cfg["probability"]) > 0


def _chord(dist: np.ndarray, radius: float) -> np.ndarray:
    """Length of the chord through a circle of ``radius`` at ``dist`` from its centre (0 outside)."""
    return 2.0 * np.sqrt(np.maximum(radius * radius - dist * dist, 0.0))


def _segment_distance(y: np.ndarray, x: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance of the points (y, x) from the segment p0-p1 (each (y, x), mm)."""
    d = p1 - p0
    t = np.clip(((y - p0[0]) * d[0] + (x - p0[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return np.hypot(y - (p0[0] + t * d[0]), x - (p0[1] + t * d[1]))


def _polyline_distance(y: np.ndarray, x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of the points (y, x) from the polyline through ``points`` ((N, 2) of (y, x), mm)."""
    dist = np.full(y.shape, np.inf, dtype=np.float64)
    for p0, p1 in zip(points[:-1], points[1:]):
        dist = np.minimum(dist, _segment_distance(y, x, p0, p1))
    return dist


def _hollow_tube(dist: np.ndarray, radius: float, cortex: float) -> tuple[np.ndarray, np.ndarray]:
    """Path lengths through a bone tube's cortex and its marrow at ``dist`` from its axis (mm)."""
    outer = _chord(dist, radius)
    inner = _chord(dist, max(radius - cortex, 0.0))
    return outer - inner, inner


def add_shoulder_girdle(
    soft: np.ndarray,
    bone: np.ndarray,
    body_path: np.ndarray,
    bone_path: np.ndarray,
    plane_spacing: tuple[float, float],
    apex_row: float,
    centre_col: float,
    chest_width_mm: float,
    rng: np.random.Generator,
    cfg: Mapping[str, Any],
) -> dict[str, np.ndarray] | None:
    """Draw a neck, shoulders, clavicles and arms into a chest phantom's projection planes.

    Above the shoulders the phantom's body is narrowed to the neck; the shoulders, humeri and arms are added
    beside it. Right and left mirror one another, each side with its own small differences.

    Args:
        soft: (R, C) line integral of the attenuation without the bone excess (rows superior to inferior,
            patient's right on the left), as ``common.synthetic.cxr`` caches it.
        bone: (R, C) line integral of the bone's excess attenuation.
        body_path: (R, C) path length through the body, mm.
        bone_path: (R, C) path length through bone, mm.
        plane_spacing: (row, column) pixel size of the planes, mm.
        apex_row: the row of the lung apices.
        centre_col: the column of the body's midline.
        chest_width_mm: the chest's width on the plane (what the sizes in ``cfg`` are fractions of).
        rng: the generator to draw the anatomy from.
        cfg: a merged ``DEFAULT_GIRDLE``.

    Returns:
        the four planes with the girdle (new arrays, keys ``soft``, ``bone``, ``body_path``, ``bone_path``),
        or ``None`` when this anatomy draws none (``cfg["probability"]``).
    """
    if rng.random() >= float(cfg["probability"]):
        return None
    w = float(chest_width_mm)
    arms_up = bool(rng.random() < float(cfg["arms_up_probability"]))
    neck_hw = 0.5 * w * draw_uniform(rng, cfg["neck_width"])
    depth = draw_uniform(rng, cfg["depth_ratio"])
    rows, cols = soft.shape
    sr, sc = (float(v) for v in plane_spacing)
    y = ((np.arange(rows, dtype=np.float64) - apex_row) * sr)[:, None] + np.zeros((1, cols))
    x = np.zeros((rows, 1)) + ((np.arange(cols, dtype=np.float64) - centre_col) * sc)[None, :]

    mu_soft = float(hu_to_mu(np.float32(_HU_SOFT)))
    excess_cortex = float(hu_to_mu(np.float32(_HU_CORTEX))) - MU_SOFT_TISSUE_PER_MM
    excess_cancellous = float(hu_to_mu(np.float32(_HU_CANCELLOUS))) - MU_SOFT_TISSUE_PER_MM

    sides = []
    for sign in (-1.0, 1.0):  # -1: the patient's right (the viewer's left)
        level = w * draw_uniform(rng, cfg["shoulder_level"])
        acromion = np.array([level, sign * 0.5 * w * draw_uniform(rng, cfg["shoulder_span"])])
        sides.append({
            "sign": sign,
            "acromion": acromion,
            "clavicle_r": w * draw_uniform(rng, cfg["clavicle_radius"]),
            "clavicle_drop": w * draw_uniform(rng, cfg["clavicle_drop"]),
            "head_r": w * draw_uniform(rng, cfg["humeral_head_radius"]),
            "arm_r": w * draw_uniform(rng, cfg["arm_radius"]),
            "angle": np.radians(draw_uniform(rng, cfg["arm_angle_deg"])),
            "thickness": w * draw_uniform(rng, cfg["shoulder_thickness"]),
        })

    # above the shoulders the body narrows to the neck: the phantom's top is kept only within the trapezius
    # slope from the neck to each acromion (a soft edge of a few mm)
    shoulder_y = min(s["acromion"][0] for s in sides)
    keep_hw = np.full(rows, np.inf)
    above = y[:, 0] < shoulder_y + 0.08 * w
    slope_t = np.clip((y[:, 0] - (shoulder_y - 0.25 * w)) / (0.33 * w), 0.0, 1.0)
    keep_hw[above] = (neck_hw + (0.5 * w - neck_hw) * slope_t ** 2)[above]
    keep = 1.0 / (1.0 + np.exp(-(keep_hw[:, None] - np.abs(x)) / 3.0))
    soft = soft * keep
    bone = bone * keep
    body_path = body_path * keep
    bone_path = bone_path * keep
    # the neck above the phantom's top rows (which are kept within the neck's width): an elliptic cylinder
    neck = _chord(x, neck_hw) * depth * (y < shoulder_y)
    soft = np.maximum(soft, mu_soft * neck)
    body_path = np.maximum(body_path, neck)

    shoulders = np.zeros_like(soft, dtype=np.float64)
    arms = np.zeros_like(soft, dtype=np.float64)
    add_bone = np.zeros_like(soft, dtype=np.float64)
    add_bone_path = np.zeros_like(soft, dtype=np.float64)
    for s in sides:
        sign, acromion = s["sign"], s["acromion"]
        # shoulder: the trapezius and deltoid, a thick capsule from the neck's base to beyond the acromion
        base = np.array([acromion[0] - 0.12 * w, sign * 0.7 * neck_hw])
        tip = acromion + np.array([0.04 * w, sign * 0.02 * w])
        r_sh = 0.11 * w
        shoulders = np.maximum(shoulders, _chord(_segment_distance(y, x, base, tip), r_sh) * s["thickness"] / (2 * r_sh))
        # the arm: from the humeral head down beside the chest, or up beside the head
        head = acromion + np.array([0.6 * s["head_r"], -sign * 0.4 * s["head_r"]])
        if arms_up:
            direction = np.array([-np.cos(s["angle"]), -sign * np.sin(s["angle"])])
        else:
            direction = np.array([np.cos(s["angle"]), sign * np.sin(s["angle"])])
        far = head + 3.0 * w * direction
        arm_axis = _segment_distance(y, x, head + 0.5 * s["head_r"] * direction, far)
        arms = arms + _chord(arm_axis, s["arm_r"]) * depth
        # humerus: its head (cancellous bone in a thin cortex) and its shaft (a hollow cortical tube)
        head_d = np.hypot(y - head[0], x - head[1])
        head_cortex, head_marrow = _hollow_tube(head_d, s["head_r"], 0.08 * s["head_r"])
        shaft_r = 0.42 * s["head_r"]
        shaft_cortex, _ = _hollow_tube(_segment_distance(y, x, head, far), shaft_r, 0.3 * shaft_r)
        cortex = np.maximum(head_cortex, shaft_cortex)
        marrow = head_marrow
        # clavicle: an S-curved tube from the sternum to the acromion, its sternal end lower
        sternal = np.array([acromion[0] + s["clavicle_drop"], sign * 0.08 * w])
        t = np.linspace(0.0, 1.0, 9)[:, None]
        line = sternal + t * (acromion - sternal)
        line[:, 0] += 0.04 * w * np.sin(2.0 * np.pi * t[:, 0])  # the clavicle's double curve
        clav_cortex, clav_marrow = _hollow_tube(_polyline_distance(y, x, line), s["clavicle_r"], 0.5 * s["clavicle_r"])
        cortex = np.maximum(cortex, clav_cortex)
        marrow = np.maximum(marrow, clav_marrow)
        add_bone += excess_cortex * cortex + excess_cancellous * marrow
        add_bone_path += cortex + marrow

    # the shoulders merge with the trunk's top (the thicker of the two); the arms lie beside or in front of
    # it and add. The bones lie inside those soft solids, whose paths already count their soft-tissue part.
    soft = np.maximum(soft, mu_soft * shoulders) + mu_soft * arms
    body_path = np.maximum(body_path, shoulders) + arms
    bone = bone + add_bone
    bone_path = bone_path + add_bone_path
    return {
        "soft": soft.astype(np.float32),
        "bone": bone.astype(np.float32),
        "body_path": body_path.astype(np.float32),
        "bone_path": bone_path.astype(np.float32),
    }
