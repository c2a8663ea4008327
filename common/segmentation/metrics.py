"""Per-case lung segmentation metrics on label maps (0 background, 1 right lung, 2 left lung).

Dice, the 95th percentile Hausdorff distance (MONAI's ``compute_hausdorff_distance`` with
``percentile=95``, in millimetres using the voxel spacing) and the volume difference in millilitres, for
each lung and for both lungs together. :class:`LungDice` is the same Dice as an ignite metric, so an
evaluator can use it as its key metric without one-hot copies of full-resolution volumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.metrics import Metric
from monai.data import MetaTensor
from monai.handlers.utils import from_engine
from monai.metrics import compute_hausdorff_distance

STRUCTURES: dict[str, tuple[int, ...]] = {"right_lung": (1,), "left_lung": (2,), "both_lungs": (1, 2)}


def voxel_spacing(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """Voxel edge lengths in mm (norms of the affine's first three columns)."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.linalg.norm(affine[:3, :3], axis=0)


def _as_label_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected a label map with one channel, got shape {x.shape}")
        x = x[0]
    return x


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def hausdorff95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th percentile Hausdorff distance in mm; NaN when either mask is empty."""
    if not pred.any() or not ref.any():
        return math.nan
    both = np.logical_or(pred, ref)
    # the surface distances only involve the union's bounding box (+1 voxel for the edge detection)
    box = tuple(
        slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 2)
        for idx in (np.nonzero(both.any(axis=tuple(a for a in range(both.ndim) if a != ax)))[0] for ax in range(3))
    )
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None]
    value = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(map(float, spacing)))
    return float(value[0, 0])


def lung_metrics(
    pred: torch.Tensor | np.ndarray,
    ref: torch.Tensor | np.ndarray,
    spacing: Sequence[float],
    structures: Mapping[str, Sequence[int]] = STRUCTURES,
    hausdorff: bool = True,
) -> dict[str, dict[str, float]]:
    """Metrics of one case.

    Args:
        pred: predicted label map ``(X, Y, Z)`` or ``(1, X, Y, Z)``.
        ref: reference label map on the same grid.
        spacing: voxel size in mm.
        structures: name -> labels that make up the structure.
        hausdorff: also compute the 95% Hausdorff distance (the slowest part).

    Returns:
        ``{structure: {"dice", "hd95_mm", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml"}}``;
        ``volume_diff_ml`` is predicted minus reference.
    """
    p_all = _as_label_array(pred)
    r_all = _as_label_array(ref)
    if p_all.shape != r_all.shape:
        raise ValueError(f"prediction {p_all.shape} and reference {r_all.shape} are not on the same grid")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    result: dict[str, dict[str, float]] = {}
    for name, labels in structures.items():
        p = np.isin(p_all, labels)
        r = np.isin(r_all, labels)
        vp, vr = float(p.sum()) * voxel_ml, float(r.sum()) * voxel_ml
        result[name] = {
            "dice": dice(p, r),
            "hd95_mm": hausdorff95(p, r, spacing) if hausdorff else math.nan,
            "volume_pred_ml": vp,
            "volume_ref_ml": vr,
            "volume_diff_ml": vp - vr,
        }
    return result


class LungDice(Metric):
    """Mean Dice of the right and left lung per case, averaged over cases (an ignite metric).

    Works on label maps (``(1, X, Y, Z)`` per case, as the post-processing writes them), so no one-hot
    copies are made. Cases whose reference has neither lung are left out.

    Args:
        labels: the labels averaged.
        output_transform: maps ``engine.state.output`` to ``(predictions, references)``.
    """

    def __init__(
        self,
        labels: Sequence[int] = (1, 2),
        output_transform: Callable = from_engine(["pred", "label"]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.labels = tuple(labels)
        self._scores: list[float] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._scores = []

    def update(self, output: Sequence) -> None:
        preds, refs = output
        for pred, ref in zip(preds, refs):
            p, r = _as_label_array(pred), _as_label_array(ref)
            values = [dice(p == lab, r == lab) for lab in self.labels]
            values = [v for v in values if not math.isnan(v)]
            if values:
                self._scores.append(float(np.mean(values)))

    def compute(self) -> float:
        import ignite.distributed as idist

        totals = torch.tensor([sum(self._scores), len(self._scores)], dtype=torch.float64)
        if idist.get_world_size() > 1:
            totals = idist.all_reduce(totals)
        return float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
