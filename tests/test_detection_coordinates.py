"""The coordinate pipeline of lung_nodule_ct_detection, checked against the synthetic ground truth.

A quickly trained model is not reliable enough to assert positions, so the reference boxes themselves are
sent through the bundle's own transforms: world LPS (annotations.csv) -> voxels of the preprocessed image
(the training path: LoadCTd, RAS, lung crop, 1.5 mm resampling) -> world LPS again (the inference
postprocessing) -> the JSON written by DetectionWriter -> read back into the voxels of the original scan
with its own geometry, where the synthetic nodule mask must be set. Done for the MHD, a NIfTI and the DICOM
series of the same scan; the three JSONs must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.apps.detection.transforms.dictionary import AffineBoxToImageCoordinated, ConvertBoxToStandardModed
from monai.bundle import ConfigParser
from monai.engines.utils import engine_apply_transform

from common.data.luna16 import build_datalist
from common.detection.inference import DetectionWriter, world_lps_to_voxel
from common.io.mhd import read_mhd
from common.synthetic.nodules import generate_nodules

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "lung_nodule_ct_detection"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodules")
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "num_train": 0,
                "num_val": 0,
                "num_test": 1,
                "dicom_cases": "test",
                "nodule": {"nodules_per_scan": [3, 3], "no_nodule_probability": 0.0},
            }
        )
    )
    generate_nodules(root / "data", config=str(config), seed=5)
    data = root / "data"
    (entry,) = [e for e in build_datalist(data) if e["box"]]
    uid = entry["seriesuid"]
    mhd = data / entry["image"]
    array, affine_ras, _ = read_mhd(mhd)
    nifti = root / f"{uid}.nii.gz"
    nib.save(nib.Nifti1Image(array, affine_ras), str(nifti))
    mask, mask_affine, _ = read_mhd(data / "nodule_masks" / f"{uid}.mhd")
    return {
        "entry": entry,
        "mhd": mhd,
        "nifti": nifti,
        "dicom": data / "dicom" / uid,
        "mask": mask,
        "mask_affine": mask_affine,
    }


@pytest.fixture(scope="module")
def inference_config():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    parser.get_parsed_content("imports")
    return parser


def _write_reference_boxes(parser, image_path, entry, out_dir):
    """Reference boxes through the bundle's preprocessing and postprocessing, written by DetectionWriter."""
    sample = {"image": str(image_path), "box": np.asarray(entry["box"], np.float32)}
    sample = parser.get_parsed_content("preprocessing", instantiate=True)(sample)
    sample = ConvertBoxToStandardModed("box", mode="cccwhd")(sample)
    sample = AffineBoxToImageCoordinated("box", "image", affine_lps_to_ras=True)(sample)
    image, voxel_boxes = sample["image"], torch.as_tensor(sample["box"])
    # in the preprocessed image (HU window to [0, 1]) the box centres are on solid nodules, not lung
    for box in voxel_boxes:
        centre = tuple(int(round(float(c))) for c in (box[:3] + box[3:]) / 2)
        assert image[0][centre] > 0.2, f"box centre {centre} is not on a nodule"
    n = len(voxel_boxes)
    ratings = torch.as_tensor(entry["malignancy"])
    output = {
        "image": image,
        "pred_box": voxel_boxes.clone(),
        "pred_score": torch.linspace(0.9, 0.5, n),
        "pred_label": torch.zeros(n, dtype=torch.long),
        "pred_malignancy": torch.nn.functional.one_hot(ratings - 1, 5).float(),
    }
    _, output = engine_apply_transform(
        {"image": image}, output, parser.get_parsed_content("postprocessing", instantiate=True)
    )
    writer = DetectionWriter(out_dir, save_box_image=True, box_image_threshold=0.0)
    return json.loads(writer.write(output).read_text()), out_dir


@pytest.mark.parametrize("kind", ["mhd", "nifti", "dicom"])
def test_written_boxes_lie_on_the_nodules(scan, inference_config, kind, tmp_path):
    doc, out_dir = _write_reference_boxes(inference_config, scan[kind], scan["entry"], tmp_path)
    assert doc["coordinate_system"] == "LPS" and doc["box_mode"] == "cccwhd"
    detections = doc["detections"]
    assert [d["score"] for d in detections] == sorted((d["score"] for d in detections), reverse=True)
    reference = np.asarray(scan["entry"]["box"])
    assert len(detections) == len(reference)
    labels_in_mask = set(np.unique(scan["mask"]).tolist())
    checked_on_mask = 0
    for label, (det, ref, rating) in enumerate(
        zip(detections, reference, scan["entry"]["malignancy"]), start=1
    ):
        # the round trip through crop and resampling keeps centre and size to well under a voxel
        assert np.allclose(det["center"], ref[:3], atol=0.5), (det["center"], ref[:3])
        assert np.allclose(det["size"], ref[3:], atol=1.0)
        assert det["malignancy"]["rating"] == rating
        # read back into the original scan's voxels: on the synthetic nodule mask, label = nodule number (a
        # 4 mm nodule covers few 2.5 mm voxels: the voxel nearest the centre or one of its neighbours). The
        # generator may leave a tiny nodule out of the mask; such a nodule is checked by position only.
        if label not in labels_in_mask:
            continue
        vox = world_lps_to_voxel(np.asarray([det["center"] + det["size"]]), scan["mask_affine"])[0]
        centre = np.round((vox[:3] + vox[3:]) / 2).astype(int)
        around = scan["mask"][tuple(slice(c - 1, c + 2) for c in centre)]
        assert label in around, f"{kind}: {det['center']} -> voxel {centre.tolist()} is not on nodule {label}"
        checked_on_mask += 1
    assert checked_on_mask >= 2
    # the box image is on the input's grid and its outlines enclose the nodules
    boxes_img = nib.load(
        str(out_dir / f"{Path(doc['image']).name.split('.mhd')[0].split('.nii')[0]}_boxes.nii.gz")
    )
    drawn = np.asarray(boxes_img.dataobj)
    assert drawn.shape == scan["mask"].shape
    for rank in range(1, len(detections) + 1):
        idx = np.argwhere(drawn == rank)
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        ref_vox = world_lps_to_voxel(reference[rank - 1 : rank], scan["mask_affine"])[0]
        centre = (ref_vox[:3] + ref_vox[3:]) / 2
        assert np.all(lo <= centre) and np.all(centre <= hi)


def test_dicom_and_nifti_agree(scan, inference_config, tmp_path):
    a, _ = _write_reference_boxes(inference_config, scan["nifti"], scan["entry"], tmp_path / "a")
    b, _ = _write_reference_boxes(inference_config, scan["dicom"], scan["entry"], tmp_path / "b")
    for da, db in zip(a["detections"], b["detections"]):
        assert np.allclose(da["center"], db["center"], atol=0.5)


def test_scan_without_nodules_gives_empty_list(scan, inference_config, tmp_path):
    sample = inference_config.get_parsed_content("preprocessing", instantiate=True)(
        {"image": str(scan["nifti"])}
    )
    output = {
        "image": sample["image"],
        "pred_box": torch.zeros(0, 6),
        "pred_score": torch.zeros(0),
        "pred_malignancy": torch.zeros(0, 5),
    }
    _, output = engine_apply_transform(
        {"image": sample["image"]},
        output,
        inference_config.get_parsed_content("postprocessing", instantiate=True),
    )
    doc = json.loads(DetectionWriter(tmp_path).write(output).read_text())
    assert doc["detections"] == [] and doc["num_detections"] == 0
