"""A corpus of bad inputs beside good ones, through a bundle's batch inference as a user runs it.

Each bad file is reported once (log and CSV row) with its name and reason, every good film is scored,
and no patient identifier or DICOM free text reaches the log or the outputs.
"""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
from dicom_factory import write_ct_series, write_radiograph
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "pediatric_cxr_pneumonia_classification"
IDENTIFIERS = ("Doe^Jane", "Doe Jane", "SECRET-ID-123", "CHEST DOE^JOHN MRN12345", "MRN12345", "St Elsewhere General")


def _film(rng: np.random.Generator, size=(200, 240)) -> Image.Image:
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    base = 120 + 60 * np.sin(yy / 17.0) * np.cos(xx / 23.0) + rng.normal(0, 5, size)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _png_claiming(path: Path, side: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _corpus(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Good films and bad inputs (file name -> words the error must contain)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    good = []
    for k in range(3):
        _film(rng).save(folder / f"good_{k}.png")
        good.append(f"good_{k}.png")
    _film(rng).convert("RGB").save(folder / "good_rgb.jpeg")
    Image.fromarray(np.asarray(_film(rng), np.uint16) * 257).save(folder / "good_16bit.png")
    film = write_radiograph(folder / "good_dx.dcm", np.asarray(_film(rng), np.uint16) * 16, modality="DX")
    ds = pydicom.dcmread(film)
    ds.SeriesDescription, ds.InstitutionName = "CHEST DOE^JOHN MRN12345", "St Elsewhere General"
    ds.save_as(film)
    good += ["good_rgb.jpeg", "good_16bit.png", "good_dx.dcm"]

    bad = {}
    (folder / "empty.png").write_bytes(b"")
    bad["empty.png"] = "empty"
    (folder / "text.png").write_text("not an image\n" * 20)
    bad["text.png"] = "not a readable image"
    data = (folder / "good_0.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    bad["cut.png"] = "cannot be decoded"
    _png_claiming(folder / "bomb.png", 20000)
    bad["bomb.png"] = "refused before decoding"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(folder / "blank.png")
    bad["blank.png"] = "blank image"
    files, _ = write_ct_series(folder / "_ct_tmp", np.zeros((8, 8, 1), np.int16))
    files[0].rename(folder / "ct_slice.dcm")
    (folder / "_ct_tmp").rmdir()
    bad["ct_slice.dcm"] = "modality is CT"
    write_radiograph(folder / "multi.dcm", np.zeros((8, 8), np.uint16) + 7, frames=3)
    bad["multi.dcm"] = "multi-frame"
    (folder / "notes.dcm").write_text("Patient Doe^Jane, SECRET-ID-123\n" * 5)
    bad["notes.dcm"] = "not a DICOM file"
    frames = [_film(rng), _film(rng)]
    frames[0].save(folder / "stack.tif", save_all=True, append_images=frames[1:])
    bad["stack.tif"] = "2 frames"
    return good, bad


def test_bad_inputs_are_reported_once_beside_good_ones(tmp_path):
    folder = tmp_path / "films"
    good, bad = _corpus(folder)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.yaml"),
         "--bundle_root", str(BUNDLE), "--dataset_dir", str(folder), "--output_dir", str(out),
         "--logging_file", str(BUNDLE / "configs" / "logging.conf")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert set(rows) == set(good) | set(bad)
    for name in good:
        assert not rows[name]["error"] and 0.0 <= float(rows[name]["p_pneumonia"]) <= 1.0, name
    for name, words in bad.items():
        assert words in rows[name]["error"] and rows[name]["p_pneumonia"] == "", (name, rows[name]["error"])
        assert sum(f"{name}:" in line for line in log.splitlines() if "skipped case" in line) == 1, name
    assert f"batch done: {len(good)} image(s) written, {len(bad)} skipped" in log
    outputs = log + (out / "predictions.csv").read_text()
    for identifier in IDENTIFIERS:
        assert identifier not in outputs, identifier
