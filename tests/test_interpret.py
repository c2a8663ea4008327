"""Occlusion sensitivity and Grad-CAM point where the lesion is.

A small classifier is trained in seconds on synthetic scans that differ only by the lesion (drusen vs
normal OCT; lobar consolidation vs clear CXR); the occlusion map of a held-out diseased scan must then
peak on the generator's lesion mask, far above chance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from common.classification import classifier
from common.interpret import (
    ExplainWriter,
    gradcam_map,
    occlusion_map,
    peak_overlap,
    predict_proba,
    save_overlay,
)

SIZE = 128


def _normalise(image: np.ndarray) -> torch.Tensor:
    """The bundles' preprocessing after loading: [0, 1] gray, per-image z-score, (1, H, W)."""
    x = torch.as_tensor(image, dtype=torch.float32) / 255.0
    return ((x - x.mean()) / x.std().clamp_min(1e-6))[None]


def _train(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = classifier(2, width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is faster than two that wait for each other
    try:
        for _ in range(epochs):
            net.train()
            for idx in torch.randperm(len(images), generator=gen).split(16):
                opt.zero_grad()
                # label smoothing keeps the probabilities off 1.0, where occlusion maps saturate (flat)
                loss = torch.nn.functional.cross_entropy(net(images[idx]), labels[idx], label_smoothing=0.2)
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def _dataset(render, n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, labels, masks = [], [], []
    for i in range(2 * n_per_class):
        out = render(rng, diseased=bool(i % 2))
        images.append(_normalise(out["image"]))
        labels.append(i % 2)
        masks.append(out["lesion_mask"])
    return torch.stack(images), torch.tensor(labels), masks


# fixed geometry and exposure: the classes differ by the lesion (and speckle/noise) only, so the small
# model has nothing else to learn and learns it in seconds
OCT_FIXED = {"tilt_deg": [0.0, 0.0], "curvature": [0.5, 0.5], "fovea_offset_mm": [0.0, 0.0], "vignetting": [0.0, 0.0],
             "rpe_depth_fraction": [0.62, 0.62], "speckle_looks": [3, 3], "dynamic_range_db": [42.0, 42.0],
             "lesion_extent": [1.0, 1.0], "vessel_shadows": [0, 0]}


def _render_oct(rng, diseased: bool):
    from common.synthetic.oct import render_oct

    return render_oct(rng, "DRUSEN" if diseased else "NORMAL", size=(SIZE, SIZE), config=OCT_FIXED)


# one child's anatomy, pose and exposure (base phantom 0): normal and consolidated films differ by the lesion
CXR_FIXED = {"rotation_deg": [0.0, 0.0], "shift_fraction": [0.0, 0.0], "size_jitter": [1.0, 1.0],
             "fill_fraction": [0.8, 0.8], "bone_contrast": [1.0, 1.0], "i0_photons": [30000.0, 30000.0],
             "scatter_fraction": [0.2, 0.2], "gamma": [1.5, 1.5], "unsharp_amount": [0.5, 0.5]}


def _render_cxr(rng, diseased: bool):
    from common.synthetic.cxr import render_cxr

    state = np.random.default_rng(int(rng.integers(2**31)))
    if diseased:
        return render_cxr(state, size=SIZE, pediatric=True, pattern="lobar", severity=float(rng.uniform(0.8, 1.0)),
                          config=CXR_FIXED, base_index=0)
    return render_cxr(state, size=SIZE, pediatric=True, config=CXR_FIXED, base_index=0)


@pytest.fixture(scope="module", params=["oct_drusen", "cxr_consolidation"])
def trained_case(request):
    render = {"oct_drusen": _render_oct, "cxr_consolidation": _render_cxr}[request.param]
    # drusen are small (about 1% of a B-scan): with few scans the model memorises them instead of
    # learning the lesion, so the OCT case gets more (cheap) scans and fewer epochs
    n_per_class, epochs = {"oct_drusen": (120, 6), "cxr_consolidation": (24, 12)}[request.param]
    images, labels, _ = _dataset(render, n_per_class=n_per_class, seed=1)
    net = _train(images, labels, epochs=epochs)
    test_images, test_labels, test_masks = _dataset(render, n_per_class=8, seed=99)
    with torch.no_grad():
        accuracy = (net(test_images).argmax(1) == test_labels).float().mean().item()
    return request.param, net, test_images, test_labels, test_masks, accuracy


def test_occlusion_peaks_on_the_lesion(trained_case):
    name, net, images, labels, masks, accuracy = trained_case
    assert accuracy >= 0.75, f"{name}: the small model did not learn the lesion (accuracy {accuracy})"
    overlaps, chances = [], []
    for image, label, mask in zip(images, labels, masks):
        # a visible lesion (a single druse of a few pixels is not what a reader would point at either)
        # that the model calls diseased
        if label != 1 or mask.mean() < 0.004 or predict_proba(net, image).argmax() != 1:
            continue
        heat = occlusion_map(net, image, target_class=1, mask_size=20, stride=5)  # Kermany's 20 px grey patch
        assert heat.shape == (SIZE, SIZE)
        # the patch is 20 px: a region within half a patch of the lesion is "on" it
        near = ndimage.binary_dilation(mask > 0, iterations=10)
        overlaps.append(peak_overlap(heat, near, top_fraction=0.05))
        chances.append(near.mean())
        if len(overlaps) == 3:
            break
    assert overlaps, f"{name}: no held-out scan with a visible lesion was classified correctly"
    assert np.mean(overlaps) >= max(0.5, 3 * np.mean(chances)), (name, overlaps, chances)


def test_gradcam_and_overlay_files(trained_case, tmp_path):
    name, net, images, labels, masks, _ = trained_case
    i = int(np.flatnonzero(labels.numpy() == 1)[0])
    cam = gradcam_map(net, images[i], target_class=1, target_layer="layer4")
    assert cam.shape == (SIZE, SIZE) and np.isfinite(cam).all() and cam.max() > 0
    png = save_overlay(images[i][0], cam, tmp_path / f"{name}.png", title="Grad-CAM")
    assert png.stat().st_size > 1000 and not list(tmp_path.glob(".*tmp*"))


def test_occlusion_map_definition_on_a_known_network():
    """A linear 'network' that only looks at one corner: hiding that corner is all that matters."""

    class CornerNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            s = x[:, :, :16, :16].mean(dim=(1, 2, 3)) * self.w
            return torch.stack([-s, s], dim=1)

    net = CornerNet()
    image = torch.zeros(1, 64, 64)
    image[:, :16, :16] = 3.0
    heat = occlusion_map(net, image, target_class=1, mask_size=16, stride=8, mode=0.0)
    assert heat[:16, :16].mean() > 0.1 and np.abs(heat[32:, 32:]).max() < 1e-6
    assert peak_overlap(heat, np.pad(np.ones((16, 16)), ((0, 48), (0, 48))), 0.05) == 1.0
    with pytest.raises(ValueError):
        occlusion_map(net, image, mask_size=16, stride=17)
    with pytest.raises(ValueError):
        ExplainWriter(["a", "b"], "/tmp", methods=["lime"])


def test_explain_draws_on_the_film_at_its_own_size_with_a_colour_bar(tmp_path):
    """A 1048 x 716 film through the pneumonia bundle's explain.yaml: the overlays come back at 1048 x 716
    (not the network's 192 x 192 square), with the colour bar and the caption drawn in, and the raw maps on
    request."""
    from pathlib import Path

    import bundle_runner
    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    bundle = repo / "bundles" / "pediatric_cxr_pneumonia_classification"
    films = tmp_path / "films"
    films.mkdir()
    yy, xx = np.mgrid[0:716, 0:1048]
    Image.fromarray((110 + 90 * np.sin(xx / 37.0) * np.cos(yy / 29.0)).astype(np.uint8)).save(films / "wide.png")
    out = tmp_path / "out"
    bundle_runner.run_workflow(bundle, ["inference.yaml", "explain.yaml"], "infer", dataset_dir=str(films),
                               output_dir=str(out), explain_methods=["gradcam"], save_maps=True)
    png = Image.open(out / "explain" / "wide_gradcam.png").convert("RGB")
    assert png.size == (1048, 716)
    pixels = np.asarray(png).astype(int)
    bar_x = 1048 - max(6, 1048 // 60) // 2 - max(4, 1048 // 100)
    top, bottom = pixels[716 // 2 - 140, bar_x], pixels[716 // 2 + 140, bar_x]
    assert top[0] > 100 and top[2] < 60 and bottom[2] > 100 and bottom[0] < 60, (top, bottom)  # jet: red .. blue
    assert pixels[:8, :200].mean() < 120  # the caption's dark band
    assert np.load(out / "explain" / "wide_gradcam.npy").shape == (192, 192)
