"""Image readers bound the decoded size from the header, and read very large films at reduced resolution."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import DIGITAL_XRAY_STORAGE, base_dataset
from PIL import Image

from common.errors import InputDataError
from common.transforms import load_radiograph
from common.transforms._image2d import MAX_DECODED_SIDE


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels but whose data is one tiny row (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def test_a_decompression_bomb_is_refused_from_its_header_naming_the_file(tmp_path):
    bomb = _png_claiming(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(InputDataError) as e:
        load_radiograph(str(bomb))
    message = str(e.value)
    assert message.startswith(str(bomb)) and "refused before decoding" in message


def test_a_dicom_header_over_the_byte_limit_is_refused_before_its_pixels_are_read(tmp_path):
    # 12,000 x 12,000 (144 M pixels, under the pixel limit) with 3 samples of 32 bits: 1.6 GiB decoded
    ds = base_dataset(DIGITAL_XRAY_STORAGE, "DX")
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 12000, 12000, 3
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.PixelData = b"\x00\x00" * 16  # far too short: the size check must come before any decoding
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputDataError, match="refused before decoding: 12000 x 12000 pixels"):
        load_radiograph(str(path))


@pytest.mark.parametrize("suffix", [".jpeg", ".png"])
def test_a_very_large_film_is_read_at_reduced_resolution(tmp_path, suffix):
    height, width = 6000, 9000
    yy, xx = np.mgrid[0:height:50, 0:width:50]
    small = ((np.sin(yy / 300.0) + np.cos(xx / 500.0) + 2) * 60).astype(np.uint8)
    film = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    path = tmp_path / f"large{suffix}"
    film.save(path)
    image = load_radiograph(str(path))
    assert max(image.shape[1:]) <= MAX_DECODED_SIDE
    h, w = image.shape[1:]
    assert w / h == pytest.approx(width / height, rel=0.01)  # the aspect ratio is kept
    # the content is the film's, averaged down
    reference = np.asarray(film.resize((w, h), Image.BOX), dtype=np.float32) / 255.0
    assert np.abs(image[0].numpy() - reference).mean() < 0.02


def test_ordinary_films_are_read_at_full_resolution(tmp_path):
    path = tmp_path / "film.png"
    Image.fromarray((np.arange(300 * 200) % 251).astype(np.uint8).reshape(300, 200)).save(path)
    assert tuple(load_radiograph(str(path)).shape) == (1, 300, 200)
