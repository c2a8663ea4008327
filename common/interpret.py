"""Where did the classifier look? Occlusion sensitivity (Kermany et al.'s protocol) and Grad-CAM.

Occlusion sensitivity (Zeiler & Fergus 2014), as Kermany et al. (Cell 2018) used it to show clinicians
what drove a diagnosis: a 20 x 20 pixel grey patch is slid over the image *at the model's input
resolution*, and the drop of the predicted class's probability is recorded for every patch position.
Here the patch is the image's mean intensity (MONAI ``mode="mean_img"``: mid-grey of the normalised
input), the stride is configurable (Kermany moved the patch over "every possible position"; stride 1
costs ~H*W forward passes, the default stride 10 costs ~(H/10)^2 and gives the same picture at patch
scale), and overlapping patch positions are averaged (``monai.visualize.OcclusionSensitivity``). The
map is ``importance = p(class | image) - p(class | image with the patch here)``: positive where hiding
the region lowers the probability.

Grad-CAM (Selvaraju et al. 2017, ``monai.visualize.GradCAM``) weights the last feature stage's channels
by their gradient: one forward and one backward pass, coarse (stage stride 32) but cheap.

``save_overlay`` writes the image with the map in colour as a PNG (atomically); ``ExplainWriter`` is the
ignite handler an ``explain`` config attaches to the inference evaluator.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.io.atomic import atomic_path

logger = logging.getLogger(__name__)


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(image).float()
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}")
    return x


def predict_proba(network: nn.Module, image: torch.Tensor) -> np.ndarray:
    """Softmax class probabilities of one image (C, H, W) or (1, C, H, W)."""
    x = _as_batch(image).to(next(network.parameters()).device)
    network.eval()
    with torch.no_grad():
        return torch.softmax(network(x).float(), dim=1)[0].cpu().numpy()


def occlusion_map(
    network: nn.Module,
    image: torch.Tensor,
    target_class: int | None = None,
    mask_size: int = 20,
    stride: int = 10,
    mode: str | float = "mean_img",
    n_batch: int = 32,
    score: str = "probability",
) -> np.ndarray:
    """Occlusion sensitivity of one image for ``target_class`` (Kermany's protocol by default).

    Args:
        network: classifier returning logits (B, C).
        image: the preprocessed network input, (C, H, W) or (1, C, H, W).
        target_class: class index; the predicted class when None.
        mask_size: side of the square grey patch in input pixels (Kermany: 20).
        stride: step between patch positions in pixels, 1 <= stride <= mask_size.
        mode: patch value: "mean_img" (the image's mean, mid-grey), "mean_patch", "gaussian" or a number.
        n_batch: occluded images per forward pass.
        score: "probability" (Kermany: softmax probability of the class) or "logit" (the class's logit
            minus the largest other logit): use "logit" for a very confident model, whose probability
            stays at 1.0 whatever one patch hides (saturation), so that its map is flat.

    Returns:
        (H, W) float32 map: drop of the ``target_class`` score when the region is hidden.
    """
    from monai.visualize import OcclusionSensitivity

    if not 1 <= stride <= mask_size:
        raise ValueError(f"stride must be between 1 and mask_size={mask_size}, got {stride}")
    if score not in ("probability", "logit"):
        raise ValueError(f"score must be 'probability' or 'logit', got {score!r}")
    x = _as_batch(image).to(next(network.parameters()).device)
    network.eval()
    with torch.no_grad():
        logits = network(x).float()
    target = int(logits.argmax()) if target_class is None else int(target_class)

    def _score(out: torch.Tensor) -> torch.Tensor:
        out = out.float()
        if score == "probability":
            return torch.softmax(out, dim=1)
        others = out.clone()
        others[:, target] = -torch.inf
        margin = out[:, target : target + 1] - others.max(dim=1, keepdim=True).values
        return margin.expand_as(out)  # the map of ``target`` is read below

    occ = OcclusionSensitivity(
        network, mask_size=mask_size, n_batch=n_batch, verbose=False, mode=mode, overlap=1.0 - stride / mask_size,
        activate=_score,
    )
    with torch.no_grad(), warnings.catch_warnings():
        # MONAI's sliding-window code indexes with lists (a torch deprecation it has to fix); the maps are right
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                                category=UserWarning)
        occluded, _ = occ(x)
        reference = _score(logits)[0, target]
    return (reference - occluded[0, target]).float().cpu().numpy().astype(np.float32)


def gradcam_map(
    network: nn.Module, image: torch.Tensor, target_class: int | None = None, target_layer: str = "layer4"
) -> np.ndarray:
    """Grad-CAM of one image for ``target_class`` at ``target_layer``, upsampled to the input size.

    Returns:
        (H, W) float32 map in [0, 1].
    """
    from monai.visualize import GradCAM

    x = _as_batch(image).to(next(network.parameters()).device)
    target = int(predict_proba(network, x).argmax()) if target_class is None else int(target_class)
    network.eval()
    with torch.enable_grad():
        cam = GradCAM(network, target_layers=target_layer)(x, class_idx=target)
    return cam[0, 0].detach().float().cpu().numpy().astype(np.float32)


def save_overlay(
    image: np.ndarray | torch.Tensor,
    heatmap: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    alpha: float = 0.45,
) -> Path:
    """Write :func:`render_overlay` as a PNG, atomically; returns the path."""
    with atomic_path(path) as tmp:
        render_overlay(image, heatmap, title, alpha).save(tmp, format="PNG")
    return Path(path)


def render_overlay(image: np.ndarray | torch.Tensor, heatmap: np.ndarray, title: str = "", alpha: float = 0.45) -> Any:
    """``image`` (H, W) in gray with ``heatmap`` in colour on top, as an H x W RGB ``PIL.Image``.

    The map is resized to the image (bilinear) when it is smaller, as a network-input map is to the film it
    came from. It is shown from 0 (transparent) to its maximum (red, jet colours); negative values (regions
    whose hiding raised the score) are not drawn. A colour bar (0 to the map's maximum, relative) sits inside the
    right edge and ``title`` (class, probability, method) on a dark band at the top, so the PNG keeps the film's
    own size and geometry.

    Returns:
        the picture.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    img = np.asarray(torch.as_tensor(image).detach().cpu().float()).squeeze()
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    h, w = img.shape
    heat = np.asarray(heatmap, dtype=np.float32).squeeze()
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat).resize((w, h), Image.BILINEAR), dtype=np.float32)
    heat = np.clip(heat, 0, None)
    heat = heat / heat.max() if heat.max() > 0 else heat
    jet = colormaps["jet"]
    rgb = np.repeat(img[..., None], 3, axis=2)
    weight = np.where(heat >= 0.05, alpha, 0.0)[..., None]
    rgb = (1 - weight) * rgb + weight * jet(heat)[..., :3]
    canvas = Image.fromarray((rgb * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, min(h, w) // 40))
    # colour bar: top = the map's maximum, bottom = 0
    bar_w, bar_h = max(6, w // 60), max(20, int(h * 0.4))
    x0, y0 = w - bar_w - max(4, w // 100), (h - bar_h) // 2
    ramp = jet(np.linspace(1, 0, bar_h))[:, :3]
    canvas.paste(Image.fromarray((np.repeat(ramp[:, None], bar_w, axis=1) * 255).astype(np.uint8)), (x0, y0))
    draw.rectangle([x0 - 1, y0 - 1, x0 + bar_w, y0 + bar_h], outline=(255, 255, 255))
    for text, y in (("max", y0), ("0", y0 + bar_h)):
        box = draw.textbbox((0, 0), text, font=font)
        draw.text((x0 - (box[2] - box[0]) - 3, y - (box[3] - box[1]) // 2), text, fill=(255, 255, 255), font=font,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    if title:
        box = draw.textbbox((0, 0), title, font=font)
        draw.rectangle([0, 0, w, box[3] - box[1] + 8], fill=(0, 0, 0))
        draw.text((4, 2), title, fill=(255, 255, 255), font=font)
    return canvas


def peak_overlap(heatmap: np.ndarray, mask: np.ndarray, top_fraction: float = 0.05) -> float:
    """Share of the ``top_fraction`` highest-scoring pixels of ``heatmap`` that fall inside ``mask``.

    Used to check that a map points at a known lesion (chance level = the mask's area share).
    """
    heat = np.asarray(heatmap, dtype=np.float64).ravel()
    m = np.asarray(mask).astype(bool).ravel()
    k = max(1, int(round(top_fraction * heat.size)))
    top = np.argpartition(-heat, k - 1)[:k]
    return float(m[top].mean())


class ExplainWriter:
    """Ignite handler: occlusion and/or Grad-CAM overlays for every image an inference evaluator sees.

    Writes ``<output_dir>/<image stem>_<method>.png`` (and ``.npy`` maps when ``save_maps``) for the
    predicted class (or ``target_class``), with the class and its probability in the title.

    Args:
        class_names: output classes in label order.
        output_dir: folder for the overlays.
        methods: any of "occlusion", "gradcam".
        mask_size: occlusion patch side in input pixels (Kermany: 20).
        stride: occlusion patch step in pixels.
        mode: occlusion patch value (see ``occlusion_map``).
        score: occlusion score, "probability" (Kermany) or "logit" (see ``occlusion_map``).
        target_layer: Grad-CAM layer (ResNet: "layer4").
        target_class: class name to explain instead of the predicted one.
        save_maps: also save the raw maps as ``.npy`` (at the network input's size, as computed).
        image_key: key of the network input in the engine output.
        source_loader: the bundle's loading transform (``@preprocessing#transforms#0``; for OCT with
            ``retina_band`` also the band crop), which reads the file at its own resolution: the overlay is drawn
            on the film (or the B-scan's retina band) as it is, the map resized to it (the network input is that
            image squashed to a square). None: drawn on the network input.
        secondary_capture: also write each overlay of a DICOM image as a DICOM Secondary Capture in its study
            (``<image stem>_<method>_sc.dcm``), for a PACS viewer.
        capture_note: added to each Secondary Capture's ImageComments (OCT: that it shows the retina band,
            not the scan's own geometry).
        bundle_root: the bundle (its name and version label the Secondary Capture).
    """

    def __init__(
        self,
        class_names: list[str] | tuple[str, ...],
        output_dir: str | os.PathLike,
        methods: list[str] | tuple[str, ...] = ("occlusion", "gradcam"),
        mask_size: int = 20,
        stride: int = 10,
        mode: str | float = "mean_img",
        score: str = "probability",
        target_layer: str = "layer4",
        target_class: str | None = None,
        save_maps: bool = False,
        image_key: str = "image",
        source_loader: Any = None,
        secondary_capture: bool = False,
        bundle_root: str | os.PathLike = ".",
        capture_note: str = "",
    ) -> None:
        unknown = set(methods) - {"occlusion", "gradcam"}
        if unknown:
            raise ValueError(f"unknown explain methods {sorted(unknown)}; use 'occlusion' and/or 'gradcam'")
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)
        self.methods = tuple(methods)
        self.mask_size, self.stride, self.mode, self.score = mask_size, stride, mode, score
        self.target_layer = target_layer
        self.target_class = None if target_class in (None, "") else self.class_names.index(target_class)
        self.save_maps = save_maps
        self.image_key = image_key
        self.source_loader = source_loader
        self.secondary_capture = secondary_capture
        self.bundle_root = bundle_root
        self.capture_note = capture_note
        self._used: set[str] = set()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _stem(self, filename: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).name.split(".")[0]) or "image"
        name, k = stem, 1
        while name in self._used:
            k += 1
            name = f"{stem}_{k}"
        self._used.add(name)
        return name

    def explain(self, network: nn.Module, image: torch.Tensor, filename: str) -> dict[str, Path]:
        """Write the overlays of one preprocessed image; returns method -> PNG path."""
        probs = predict_proba(network, image)
        target = int(probs.argmax()) if self.target_class is None else self.target_class
        stem = self._stem(filename)
        title = f"{self.class_names[target]} p={probs[target]:.2f}"
        background = _as_batch(image)[0, 0]
        if self.source_loader is not None and filename and Path(filename).exists():
            background = self.source_loader({self.image_key: filename})[self.image_key]
        written = {}
        for method in self.methods:
            if method == "occlusion":
                heat = occlusion_map(network, image, target, self.mask_size, self.stride, self.mode, score=self.score)
                label = f"occlusion {self.mask_size}px/{self.stride}"
            else:
                heat = gradcam_map(network, image, target, self.target_layer)
                label = "Grad-CAM"
            path = self.output_dir / f"{stem}_{method}.png"
            picture = render_overlay(background, heat, f"{title} | {label}")
            with atomic_path(path) as tmp:
                picture.save(tmp, format="PNG")
            written[method] = path
            if self.secondary_capture:
                self._capture(filename, np.asarray(picture), f"{label} {title}", path.with_name(f"{stem}_{method}_sc.dcm"))
            if self.save_maps:
                with atomic_path(self.output_dir / f"{stem}_{method}.npy") as tmp:
                    np.save(tmp, heat)
        return written

    def _capture(self, filename: str, rgb: np.ndarray, description: str, path: Path) -> None:
        """The overlay as a DICOM Secondary Capture, for a DICOM image (others: nothing to reference)."""
        from common.io.dicom_results import bundle_identity, image_header, overlay_capture, write_result

        header = image_header(filename)
        if header is not None:
            identity = bundle_identity(self.bundle_root)
            write_result(lambda: overlay_capture(header, rgb, *identity, description, note=self.capture_note), path, filename,
                         "Secondary Capture")

    def __call__(self, engine) -> None:
        from common.classification.handlers import _filename, _items

        network = engine.network
        if not any(True for _ in network.parameters()):
            logger.warning("explain needs the PyTorch network (not an ONNX Runtime session); nothing written")
            return
        for item in _items(engine.state.output):
            filename = _filename(item, self.image_key)
            image: Any = item[self.image_key]
            self.explain(network, image, filename or "image")
