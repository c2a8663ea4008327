"""Synthetic chest X-rays (DRR from CT, pneumonia set) and OCT B-scans: physics, ground truth, layouts."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from common.errors import InputDataError
from common.synthetic import cxr as cxr_mod
from common.synthetic.drr import hu_to_mu, project_drr, project_label
from common.synthetic.oct import CLASSES as OCT_CLASSES
from common.synthetic.oct import generate_oct, render_oct

# a fast pool for the tests: two base phantoms per kind
FAST = {"pool_size": 2}


# ----------------------------------------------------------------------------------------------------
# DRR on arbitrary volumes
# ----------------------------------------------------------------------------------------------------


def _box_phantom() -> tuple[np.ndarray, np.ndarray]:
    """Water box in air with a bone rod on the patient's right, high up, and an air pocket low left.

    RAS voxel order: +X patient's right, +Y anterior, +Z superior; 2 x 2 x 2.5 mm voxels.
    """
    hu = np.full((80, 60, 100), -1000.0, dtype=np.float32)
    hu[5:75, 5:55, 5:95] = 0.0
    hu[60:66, 20:40, 70:80] = 1000.0  # bone: patient's right (high X), superior (high Z)
    hu[10:25, 10:50, 15:30] = -900.0  # air: patient's left, inferior
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-80.0, -60.0, -125.0]
    return hu, affine


def test_hu_to_mu_orders_tissues():
    mu = hu_to_mu(np.array([-1000.0, -850.0, 0.0, 40.0, 700.0]))
    assert mu[0] == pytest.approx(0.0, abs=1e-7)
    assert np.all(np.diff(mu) > 0)
    # bone attenuates more than the air-water line predicts at diagnostic energies
    assert mu[4] > mu[2] * 1.7


def test_drr_orientation_bone_bright_and_spacing():
    hu, affine = _box_phantom()
    image, meta = project_drr(hu, affine, return_meta=True)
    assert meta["pixel_spacing"] == pytest.approx(2.0)
    # rows: Z extent 250 mm at 2 mm; columns: X extent 160 mm at 2 mm
    assert image.shape == (125, 80)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    bone_rc = np.unravel_index(np.argmax(meta["line_integral"]), image.shape)
    # the bone rod (superior, patient's right) is in the upper rows and on the viewer's left
    assert bone_rc[0] < image.shape[0] / 2 and bone_rc[1] < image.shape[1] / 2
    bone_px = image[
        int((250 - 80 * 2.5) / 2) + 2 : int((250 - 70 * 2.5) / 2) - 2, (80 - 66) + 1 : (80 - 60) - 1
    ]
    water_px = image[60:70, 35:45]
    air_pocket = image[
        int((250 - 30 * 2.5) / 2) + 2 : int((250 - 15 * 2.5) / 2) - 2, 80 - 25 + 1 : 80 - 10 - 1
    ]
    assert bone_px.mean() > water_px.mean() + 0.1
    assert air_pocket.mean() < water_px.mean() - 0.05


def test_drr_same_image_from_any_voxel_order():
    hu, affine = _box_phantom()
    ras = project_drr(hu, affine)
    # the same scan stored LPS-style (i towards the left, j towards posterior) with the matching affine
    flipped = hu[::-1, ::-1, :].copy()
    aff2 = affine.copy()
    aff2[0, 0], aff2[1, 1] = -2.0, -2.0
    aff2[:3, 3] = affine[:3, 3] + [79 * 2.0, 59 * 2.0, 0.0]
    np.testing.assert_allclose(project_drr(flipped, aff2), ras, atol=1e-5)
    # and with the axes permuted (Z, X, Y storage)
    perm = np.transpose(hu, (2, 0, 1)).copy()
    aff3 = np.zeros((4, 4))
    aff3[0, 1], aff3[1, 2], aff3[2, 0], aff3[3, 3] = 2.0, 2.0, 2.5, 1.0
    np.testing.assert_allclose(project_drr(perm, aff3), ras, atol=1e-5)


def test_drr_output_shape_noise_and_cone_beam():
    hu, affine = _box_phantom()
    clean = project_drr(hu, affine, output_shape=(128, 128))
    assert clean.shape == (128, 128)
    noisy = project_drr(
        hu, affine, output_shape=(128, 128), rng=np.random.default_rng(0), detector={"i0_photons": 2000.0}
    )
    assert 0.005 < np.abs(noisy - clean).mean() < 0.2
    again = project_drr(
        hu, affine, output_shape=(128, 128), rng=np.random.default_rng(0), detector={"i0_photons": 2000.0}
    )
    np.testing.assert_array_equal(noisy, again)
    # a point source magnifies: the projected rod is wider than in the parallel beam
    label = (hu > 500).astype(np.uint8)
    par = project_label(label, affine, output_shape=(128, 128), pixel_spacing=2.0)
    cone = project_label(
        label,
        affine,
        output_shape=(128, 128),
        pixel_spacing=2.0,
        geometry="cone",
        source_to_detector_mm=400.0,
    )
    assert cone.sum() > par.sum() * 1.1
    with pytest.raises(ValueError):
        project_drr(hu[:, :, 0], np.eye(4))


def test_drr_user_ct_nifti_and_metatensor(tmp_path):
    nib = pytest.importorskip("nibabel")
    hu, affine = _box_phantom()
    # a "user CT": int16 LPS-like storage (as a DICOM converter writes it), anisotropic slices
    stored = hu[::-1, ::-1, :].astype(np.int16)
    aff = affine.copy()
    aff[0, 0], aff[1, 1] = -2.0, -2.0
    aff[:3, 3] = affine[:3, 3] + [79 * 2.0, 59 * 2.0, 0.0]
    path = tmp_path / "user_ct.nii.gz"
    nib.save(nib.Nifti1Image(stored, aff), str(path))
    img = nib.load(str(path))
    drr = project_drr(np.asanyarray(img.dataobj), img.affine, output_shape=(96, 96))
    expected = project_drr(hu, affine, output_shape=(96, 96))
    np.testing.assert_allclose(drr, expected, atol=1e-4)
    # a MONAI MetaTensor (1, X, Y, Z) brings its own affine
    from monai.data import MetaTensor

    mt = MetaTensor(np.asanyarray(img.dataobj)[None].astype(np.float32), affine=img.affine)
    np.testing.assert_allclose(project_drr(mt, output_shape=(96, 96)), expected, atol=1e-4)


def test_drr_of_ct_loaded_by_the_bundles_reader(tmp_path):
    transforms = pytest.importorskip("common.transforms")
    if not hasattr(transforms, "LoadCTd"):
        pytest.skip("common.transforms.LoadCTd not available in this checkout")
    nib = pytest.importorskip("nibabel")
    hu, affine = _box_phantom()
    stored = hu[::-1, ::-1, :].astype(np.int16)  # LPS-like storage, as DICOM converters write it
    aff = affine.copy()
    aff[0, 0], aff[1, 1] = -2.0, -2.0
    aff[:3, 3] = affine[:3, 3] + [79 * 2.0, 59 * 2.0, 0.0]
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(stored, aff), str(path))
    loaded = transforms.LoadCTd(keys="image")({"image": str(path)})["image"]
    np.testing.assert_allclose(
        project_drr(loaded, output_shape=(96, 96)), project_drr(hu, affine, output_shape=(96, 96)), atol=1e-4
    )


def test_project_label_lung_fields():
    hu, affine = _box_phantom()
    label = np.zeros(hu.shape, dtype=np.uint8)
    label[50:70, 10:50, 20:80] = 1  # right lung
    label[10:30, 10:50, 20:80] = 2  # left lung
    both = project_label(label, affine)
    right = project_label(label, affine, labels=[1])
    assert both.dtype == np.uint8 and set(np.unique(both)) == {0, 1}
    assert right.sum() == pytest.approx(both.sum() / 2, rel=0.05)
    cols = np.nonzero(right.any(axis=0))[0]
    assert cols.max() < both.shape[1] / 2  # the right lung is on the viewer's left


# ----------------------------------------------------------------------------------------------------
# CXR rendered from the CT phantom
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom():
    from common.synthetic.ct_phantom import make_chest_phantom

    cfg = {"in_plane_spacing_mm": 2.5, "slice_spacing_mm": [2.5, 2.5], "table": False}
    return make_chest_phantom(np.random.default_rng(7), cfg, add_noise=False)


def test_drr_of_phantom_brighter_where_bone_is(phantom):
    shape = (128, 128)
    # fixed window (brightness comparable between films), no scatter (which spreads bone's shadow)
    detector = {"unsharp_amount": 0.0, "window": (0.0, 8.0), "scatter_fraction": 0.0}
    image = project_drr(phantom.hu, phantom.affine, output_shape=shape, detector=detector)
    dense_bone = project_label(phantom.bone_mask, phantom.affine, output_shape=shape, min_path_mm=10.0) > 0
    any_bone = project_label(phantom.bone_mask, phantom.affine, output_shape=shape, min_path_mm=0.5) > 0
    body = project_label(phantom.body_mask, phantom.affine, output_shape=shape, min_path_mm=20.0) > 0
    lung = project_label(phantom.lung_label, phantom.affine, output_shape=shape) > 0
    soft = body & ~any_bone & ~lung
    assert dense_bone.sum() > 30 and soft.sum() > 100
    assert image[dense_bone].mean() > image[soft].mean() + 0.1
    # with the bones turned into soft tissue the film gets darker where, and only where, the bones were
    soft_hu = np.where(phantom.bone_mask, np.float32(40.0), phantom.hu)
    boneless = project_drr(soft_hu, phantom.affine, output_shape=shape, detector=detector)
    diff = image - boneless
    assert diff[dense_bone].mean() > 0.01  # > 0.08 in log units: 1 cm of bone
    # rays that miss the bones do not change (up to interpolation at the mask edges)
    assert np.abs(diff[body & ~any_bone]).mean() < 0.05 * diff[dense_bone].mean()


def test_cxr_brighter_where_bone_is(phantom):
    kwargs = {"size": 128, "config": {**FAST, "gamma": [1.0, 1.0], "unsharp_amount": [0.0, 0.0]}}
    out = cxr_mod.render_cxr(np.random.default_rng(3), phantom=phantom, **kwargs)
    image, bone, body = out["image"].astype(float), out["bone_mask"] > 0, out["body_mask"] > 0
    soft_hu = np.where(phantom.bone_mask, np.float32(40.0), phantom.hu).astype(np.float32)
    fields = {k: getattr(phantom, k) for k in ("lung_label", "spacing", "affine", "bone_mask")}
    out2 = cxr_mod.render_cxr(
        np.random.default_rng(3), phantom=SimpleNamespace(hu=soft_hu, **fields), **kwargs
    )
    np.testing.assert_array_equal(out["bone_mask"], out2["bone_mask"])  # same pose
    diff = image - out2["image"].astype(float)
    assert diff[bone].mean() > diff[body & ~bone].mean() + 5.0


def test_cxr_from_real_ct_files(phantom, tmp_path):
    """``ct_sources``: NIfTI CTs with a one-label lung mask beside them are projected instead of phantoms."""
    import nibabel as nib

    for name in ("Case_001", "Case_002"):
        nib.save(nib.Nifti1Image(phantom.hu.astype(np.int16), phantom.affine), tmp_path / f"{name}_ct.nii.gz")
        binary = (phantom.lung_label > 0).astype(np.uint8)  # both lungs in one label, as LCTSC ships them
        nib.save(nib.Nifti1Image(binary, phantom.affine), tmp_path / f"{name}_lung.nii.gz")
    config = {**FAST, "ct_sources": str(tmp_path / "*_ct.nii.gz"), "pool_size": 2}
    out = cxr_mod.render_cxr(np.random.default_rng(0), size=96, pediatric=True, pattern="lobar", severity=0.8,
                             config=config, base_index=1)
    assert out["image"].shape == (96, 96) and out["lung_mask"].any()
    # the split gave the lesion one lung: the consolidation lies on one side of the film only
    cols = np.nonzero(out["lesion_mask"].any(axis=0))[0]
    lung_cols = np.nonzero(out["lung_mask"].any(axis=0))[0]
    middle = (lung_cols[0] + lung_cols[-1]) / 2
    assert cols.size and (cols.max() < middle + 3 or cols.min() > middle - 3)
    (tmp_path / "Case_002_lung.nii.gz").unlink()
    with pytest.raises(InputDataError, match="Case_002_ct.nii.gz.*no lung mask"):
        cxr_mod.render_cxr(np.random.default_rng(0), size=96, config={**config, "pool_seed": 1}, base_index=1)
    with pytest.raises(InputDataError, match="no CT volume matches"):
        cxr_mod.render_cxr(np.random.default_rng(0), size=96, config={**config, "ct_sources": str(tmp_path / "none*.nii")})



@pytest.mark.parametrize("pediatric", [True, False])
def test_cxr_lesion_inside_lungs_and_consolidation_brighter(pediatric):
    rng_state = 11
    normal = cxr_mod.render_cxr(np.random.default_rng(rng_state), size=128, pediatric=pediatric, config=FAST)
    lobar = cxr_mod.render_cxr(
        np.random.default_rng(rng_state),
        size=128,
        pediatric=pediatric,
        pattern="lobar",
        severity=1.0,
        config=FAST,
    )
    assert normal["lesion_mask"].sum() == 0
    les, lung = lobar["lesion_mask"] > 0, lobar["lung_mask"] > 0
    assert les.sum() > 30
    assert np.all(lung[les])  # the projected 3D opacity lies within the projected lungs
    np.testing.assert_array_equal(normal["lung_mask"], lobar["lung_mask"])  # same pose, same anatomy
    gain = lobar["image"][les].astype(float).mean() - normal["image"][les].astype(float).mean()
    outside = lung & ~les
    drift = lobar["image"][outside].astype(float).mean() - normal["image"][outside].astype(float).mean()
    assert gain > 15.0 and gain > drift + 10.0
    # a lobar consolidation stays in one lung: columns on one side of the midline
    cols = np.nonzero(les.any(axis=0))[0]
    lung_cols = np.nonzero(lung.any(axis=0))[0]
    mid = (lung_cols.min() + lung_cols.max()) / 2
    assert cols.max() < mid or cols.min() > mid


def test_cxr_interstitial_bilateral_and_severity_scales_extent():
    low = cxr_mod.render_cxr(
        np.random.default_rng(5), size=128, pediatric=True, pattern="interstitial", severity=0.0, config=FAST
    )
    high = cxr_mod.render_cxr(
        np.random.default_rng(5), size=128, pediatric=True, pattern="interstitial", severity=1.0, config=FAST
    )
    les = high["lesion_mask"] > 0
    assert np.all(high["lung_mask"][les] > 0)
    cols = np.nonzero(les.any(axis=0))[0]
    lung_cols = np.nonzero(high["lung_mask"].any(axis=0))[0]
    mid = (lung_cols.min() + lung_cols.max()) / 2
    assert cols.min() < mid < cols.max()  # bilateral
    assert high["lesion_mask"].sum() > 1.5 * low["lesion_mask"].sum()
    with pytest.raises(ValueError):
        cxr_mod.render_cxr(np.random.default_rng(0), size=64, pattern="cavitary", config=FAST)


def test_cxr_rendering_is_deterministic():
    a = cxr_mod.render_cxr(
        np.random.default_rng(2), size=96, pattern="interstitial", severity=0.5, config=FAST
    )
    b = cxr_mod.render_cxr(
        np.random.default_rng(2), size=96, pattern="interstitial", severity=0.5, config=FAST
    )
    for key in ("image", "lung_mask", "lesion_mask"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["image"].shape == (96, 96) and a["image"].dtype == np.uint8


# ----------------------------------------------------------------------------------------------------
# Kermany ChestXRay2017 set
# ----------------------------------------------------------------------------------------------------

NORMAL_RE = re.compile(r"^(NORMAL2-)?IM-(\d{4})-(\d{4})\.jpeg$")
PNEUMONIA_RE = re.compile(r"^person(\d+)_(bacteria|virus)_(\d+)\.jpeg$")
OCT_RE = re.compile(r"^(CNV|DME|DRUSEN|NORMAL)-(\d{6,7})-(\d+)\.jpeg$")

SMALL_CXR = {
    "image_size": 64,
    "splits": {
        "train": {"NORMAL": 4, "BACTERIAL": 6, "VIRAL": 4},
        "test": {"NORMAL": 2, "BACTERIAL": 3, "VIRAL": 2},
    },
    "render": FAST,
}


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_pneumonia_layout_naming_masks_and_determinism(tmp_path):
    out = cxr_mod.generate_pneumonia_cxr(tmp_path / "a", config=SMALL_CXR, seed=4)
    images = sorted((out / "chest_xray").rglob("*.jpeg"))
    assert len(images) == 21
    patients: dict[str, set] = {"train": set(), "test": set()}
    kinds = {"NORMAL": 0, "bacteria": 0, "virus": 0}
    for path in images:
        split, folder = path.parts[-3], path.parts[-2]
        assert split in ("train", "test") and folder in ("NORMAL", "PNEUMONIA")
        if folder == "NORMAL":
            m = NORMAL_RE.match(path.name)
            assert m, path.name
            patients[split].add(path.name.rsplit("-", 1)[0])
            kinds["NORMAL"] += 1
        else:
            m = PNEUMONIA_RE.match(path.name)
            assert m, path.name
            patients[split].add(f"person{m.group(1)}")
            kinds[m.group(2)] += 1
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (64, 64) and im.format == "JPEG"
        mask_path = out / "lesion_masks" / path.relative_to(out).with_suffix(".png")
        mask = np.asarray(Image.open(mask_path))
        lung = np.asarray(Image.open(out / "lung_masks" / path.relative_to(out).with_suffix(".png")))
        assert set(np.unique(mask)) <= {0, 255}
        if folder == "NORMAL":
            assert mask.max() == 0
        assert np.all(lung[mask > 0] == 255)
    assert kinds == {"NORMAL": 6, "bacteria": 9, "virus": 6}
    assert not patients["train"] & patients["test"]  # a patient in one split only
    desc = yaml.safe_load((out / "dataset.yaml").read_text())
    assert desc["counts"]["train"] == {"NORMAL": 4, "BACTERIAL": 6, "VIRAL": 4}
    assert desc["seed"] == 4
    assert sum(desc["patients"]["train"].values()) == len(patients["train"])
    # the same seed gives identical bytes (also when rendered by two processes); another seed does not
    again = cxr_mod.generate_pneumonia_cxr(tmp_path / "b", config={**SMALL_CXR, "num_workers": 2}, seed=4)
    assert _digest(out) == _digest(again)
    other = cxr_mod.generate_pneumonia_cxr(tmp_path / "c", config=SMALL_CXR, seed=5)
    assert _digest(other) != _digest(out)


def test_generator_config_errors(tmp_path):
    with pytest.raises(InputDataError, match="imagesize"):
        cxr_mod.generate_pneumonia_cxr(tmp_path, config={"imagesize": 64})
    with pytest.raises(InputDataError, match="gama"):
        cxr_mod.generate_pneumonia_cxr(tmp_path, config={"render": {"gama": [1, 1]}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("splits: {train: {CNV: 1}}\nrender: {speckle: 3}\n")
    with pytest.raises(InputDataError, match="bad.yaml"):
        generate_oct(tmp_path / "oct", config=bad)
    with pytest.raises(InputDataError, match="not found"):
        generate_oct(tmp_path / "oct", config=tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------------------------------
# OCT
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", OCT_CLASSES)
def test_oct_lesion_masks(label):
    for seed in range(4):
        out = render_oct(np.random.default_rng(seed), label, size=(160, 192))
        image, mask = out["image"], out["lesion_mask"]
        assert image.shape == (160, 192) and image.dtype == np.uint8
        assert image.std() > 10
        b = out["boundaries"]
        if label == "NORMAL":
            assert mask.sum() == 0
            continue
        assert mask.sum() > 0
        rows, cols = np.nonzero(mask)
        ilm, bruch = b["ILM"][cols], b["Bruch"][cols]
        assert np.all(rows >= ilm - 1) and np.all(rows <= bruch + 1)  # inside the retina / RPE complex
        if label == "DRUSEN":
            # drusen sit at the RPE band: under the (lifted) RPE, above Bruch's membrane
            assert np.all(rows >= b["RPE_top"][cols] - 1)
            # and they lift the RPE: it rises where drusen are
            normal_gap = np.median(b["Bruch"] - b["RPE_top"])
            assert (b["Bruch"] - b["RPE_top"])[cols].max() > normal_gap + 2
        if label == "DME":
            # intraretinal cysts and sub-retinal fluid: all above the RPE
            assert np.all(rows <= b["RPE_top"][cols] + 1)


def test_oct_speckle_and_layers():
    out = render_oct(np.random.default_rng(0), "NORMAL", size=(224, 224))
    image, b = out["image"].astype(float), out["boundaries"]
    cols = np.arange(40, 184)
    rpe = np.round((b["RPE_top"][cols] + b["Bruch"][cols]) / 2).astype(int)
    vitreous = np.round(b["ILM"][cols] - 15).astype(int)
    onl = np.round((b["OPL/ONL"][cols] + b["ELM_top"][cols]) / 2).astype(int)
    # the RPE is the brightest band, the vitreous dark, the outer nuclear layer dark
    assert image[rpe, cols].mean() > image[onl, cols].mean() + 30
    assert image[onl, cols].mean() > image[vitreous[vitreous >= 0], cols[vitreous >= 0]].mean()
    # foveal pit: the retina is thinnest near the fovea
    thickness = b["RPE_top"] - b["ILM"]
    assert thickness.min() < np.median(thickness) * 0.85


def test_oct_layout_naming_and_determinism(tmp_path):
    config = {
        "image_size": [64, 80],
        "splits": {"train": dict.fromkeys(OCT_CLASSES, 5), "test": dict.fromkeys(OCT_CLASSES, 2)},
    }
    out = generate_oct(tmp_path / "a", config=config, seed=1)
    images = sorted((out / "OCT2017").rglob("*.jpeg"))
    assert len(images) == 28
    split_patients: dict[str, set] = {"train": set(), "test": set()}
    for path in images:
        m = OCT_RE.match(path.name)
        assert m and m.group(1) == path.parts[-2], path.name
        assert path.parts[-3] in ("train", "test")
        split_patients[path.parts[-3]].add(m.group(2))
        mask = np.asarray(Image.open(out / "lesion_masks" / path.relative_to(out).with_suffix(".png")))
        assert (mask.max() == 0) == (m.group(1) == "NORMAL")
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (80, 64)
    assert not split_patients["train"] & split_patients["test"]
    desc = yaml.safe_load((out / "dataset.yaml").read_text())
    assert desc["counts"]["test"] == dict.fromkeys(OCT_CLASSES, 2)
    assert _digest(out) == _digest(generate_oct(tmp_path / "b", config={**config, "num_workers": 2}, seed=1))


def test_montage_script_writes_small_png(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "synthetic_montage.py"
    spec = importlib.util.spec_from_file_location("synthetic_montage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(out=str(tmp_path), datasets="oct", tile=96)
    assert [Path(p).name for p in written] == ["synthetic_oct.png"]
    with Image.open(written[0]) as im:
        assert im.format == "PNG" and im.size[0] > 4 * 96
    assert Path(written[0]).stat().st_size < 300_000
    with pytest.raises(SystemExit):
        module.main(out=str(tmp_path), datasets="mri")


def test_render_config_takes_any_phantom_key():
    """``render.phantom`` passes the chest phantom's own keys on; an unknown one fails naming the file."""
    cfg = cxr_mod.render_config({"phantom": {"rib_descent_mm": [80.0, 110.0]}})
    assert cfg["phantom"] == {"table": False, "rib_descent_mm": [80.0, 110.0]}
    assert cxr_mod.render_config(None)["phantom"] == {"table": False}
    with pytest.raises(InputDataError, match=r"exp\.yaml: render: phantom.*rib_decent"):
        cxr_mod.render_config({"phantom": {"rib_decent": 3}}, source="exp.yaml: render")
    with pytest.raises(InputDataError, match="mapping"):
        cxr_mod.render_config({"phantom": 3})


def test_oct_choroid_attenuation_darkens_the_deep_scan():
    def deep_mean(attenuation):
        out = render_oct(np.random.default_rng(5), "NORMAL", size=(248, 256),
                         config={"choroid_attenuation_per_mm": attenuation, "rpe_depth_fraction": [0.3, 0.32]})
        bruch = int(np.median(out["boundaries"]["Bruch"]))
        return out["image"][bruch + 40 : bruch + 120].astype(float).mean()

    assert deep_mean([2.0, 2.5]) < 0.7 * deep_mean([0.0, 0.0])


def test_oct_lesion_keys_change_the_lesions_and_keep_them_in_the_retina():
    def lift(height):
        out = render_oct(np.random.default_rng(2), "DRUSEN", size=(248, 256), config={"drusen_height_um": height})
        return float((out["boundaries"]["Bruch"] - out["boundaries"]["RPE_top"]).max())

    assert lift([100.0, 120.0]) > 1.5 * lift([20.0, 25.0])

    def cnv_lift(scale):  # how far the lesion (PED, lesion and fluid) lifts the retina off Bruch's membrane
        heights = []
        for seed in range(3):
            out = render_oct(np.random.default_rng(seed), "CNV", size=(248, 256),
                             config={"cnv_height_scale": scale, "lesion_extent": [1.0, 1.0]})
            b = out["boundaries"]
            heights.append(float((b["Bruch"] - b["EZ/IZ"]).max() - np.median(b["Bruch"] - b["EZ/IZ"])))
        return np.mean(heights)

    assert cnv_lift(0.4) < 0.6 * cnv_lift(1.0)

    def lifted_columns(drusen_probability):  # columns where the RPE is lifted off Bruch's membrane
        counts = []
        for seed in range(4):
            out = render_oct(np.random.default_rng(seed), "CNV", size=(248, 256),
                             config={"cnv_drusen_probability": drusen_probability, "lesion_extent": [1.0, 1.0]})
            b = out["boundaries"]
            thickness = b["Bruch"] - b["RPE_top"]
            counts.append(int((thickness > np.percentile(thickness, 10) + 3).sum()))
        return np.array(counts)

    without, beside = lifted_columns(0.0), lifted_columns(1.0)
    assert np.all(beside >= without) and beside.sum() > without.sum()

    def dme(subtle):  # thickest retina (ILM to RPE) and cyst area, over a few scans
        thick, area = [], []
        for seed in range(4):
            out = render_oct(np.random.default_rng(seed), "DME", size=(248, 256),
                             config={"dme_subtle_probability": subtle, "lesion_extent": [1.0, 1.0]})
            b = out["boundaries"]
            thick.append(float((b["RPE_top"] - b["ILM"]).max()))
            area.append(int(out["lesion_mask"].sum()))
        return np.array(thick), np.array(area)

    (thick, area), (thin, small) = dme(0.0), dme(1.0)
    assert np.all(thin < thick) and small.sum() < 0.5 * area.sum()
    for seed in range(4):
        out = render_oct(np.random.default_rng(seed), "CNV", size=(248, 256),
                         config={"cnv_disruption": 1.0, "fluid_reflectivity": 0.002, "lesion_extent": [1.0, 1.0]})
        rows, cols = np.nonzero(out["lesion_mask"])
        b = out["boundaries"]
        assert rows.size and np.all(rows >= b["ILM"][cols] - 1) and np.all(rows <= b["Bruch"][cols] + 1)
    # fluid set darker is darker than the default fluid
    def fluid_mean(config):
        out = render_oct(np.random.default_rng(7), "DME", size=(248, 256), config={"lesion_extent": [1.0, 1.0], **config})
        return out["image"][out["lesion_mask"] > 0].astype(float).mean()

    assert fluid_mean({"fluid_reflectivity": 0.001}) < fluid_mean({})


def test_oct_band_look_keys_fluid_lumens_and_vessels():
    def fluid_lift(probability):  # how far the outer retina sits above the RPE: the lesion and any fluid under it
        lifts = []
        for seed in range(5):
            out = render_oct(np.random.default_rng(seed), "CNV", size=(248, 256),
                             config={"cnv_fluid_probability": probability, "lesion_extent": [1.0, 1.0]})
            b = out["boundaries"]
            lifts.append(float((b["RPE_top"] - b["EZ/IZ"]).max()))
        return np.array(lifts)

    none, always = fluid_lift(0.0), fluid_lift(1.0)
    # the lesion is drawn before the fluid's chance, so each seed's lesion is the same with and without fluid
    assert np.all(always >= none - 1e-3) and always.sum() > none.sum() + 10

    def choroid_mean(contrast):  # the choroid's mean grey: darker where its vessel lumens are darker
        out = render_oct(np.random.default_rng(4), "NORMAL", size=(248, 256),
                         config={"choroid_lumen_contrast": contrast, "speckle_looks": [16, 16]})
        b = out["boundaries"]
        return float(out["image"][int(np.median(b["Bruch"])) + 4 : int(np.median(b["choroid/sclera"]))].mean())

    assert choroid_mean(0.1) < choroid_mean(0.5) < choroid_mean(1.0)
    assert choroid_mean(0.1) < choroid_mean(1.0) - 5.0

    def inner_peak(brightness):  # the inner retina's brightest pixels against the RPE's
        out = render_oct(np.random.default_rng(6), "NORMAL", size=(248, 256),
                         config={"vessel_brightness": brightness, "vessel_shadows": [4, 4]})
        b = out["boundaries"]
        ilm, inl, rpe = (int(np.median(b[k])) for k in ("ILM", "IPL/INL", "RPE_top"))
        img = out["image"].astype(float)
        return np.percentile(img[ilm:inl], 99.5) / np.percentile(img[rpe : rpe + 4], 50)

    assert inner_peak(1.0) > inner_peak(0.0) * 1.05
