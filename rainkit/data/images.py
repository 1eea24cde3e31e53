"""Reading and writing images robustly.

`read_image` turns anything a user may hand us (8/16-bit, grey, RGBA, CMYK JPEG, EXIF-rotated)
into float32 RGB in [0, 1], and fails with one line naming the file and the problem otherwise.
`write_image` writes through rainkit's one atomic writer (`rainkit.io.atomic`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rainkit.errors import InputError
from rainkit.io.atomic import atomic_write_bytes

# A public-domain photo with physics rain, shipped so that `rainkit derain --sample` needs no user file.
SAMPLE_RAINY_IMAGE = Path(__file__).resolve().parent.parent / "assets" / "sample" / "rainy-grace-hopper.jpg"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OUTPUT_FORMATS = ("png", "jpg", "webp", "tif")

# EXIF orientation -> (transpose?, rotation for cv2.rotate or None, flip code or None) applied in order.
_ORIENT = {
    2: [("flip", 1)],
    3: [("rot", cv2.ROTATE_180)],
    4: [("flip", 0)],
    5: [("transpose", None)],
    6: [("rot", cv2.ROTATE_90_CLOCKWISE)],
    7: [("rot", cv2.ROTATE_90_CLOCKWISE), ("flip", 1)],
    8: [("rot", cv2.ROTATE_90_COUNTERCLOCKWISE)],
}


@dataclass
class Image:
    """A decoded image: RGB float32 in [0, 1], optional alpha, and what it was on disk."""

    rgb: np.ndarray  # H x W x 3 float32
    alpha: np.ndarray | None  # H x W float32 in [0, 1], or None
    bit_depth: int  # 8 or 16
    grayscale: bool
    path: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _exif_orientation(path: Path) -> int:
    try:
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # EXIF is optional metadata: an unreadable block means "no rotation"
        return 1


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    for op, arg in _ORIENT.get(orientation, []):
        if op == "flip":
            array = cv2.flip(array, arg)
        elif op == "rot":
            array = cv2.rotate(array, arg)
        else:
            array = np.ascontiguousarray(np.swapaxes(array, 0, 1))
    return array


def _check_complete(path: Path, data: bytes) -> None:
    """Catch truncated JPEG/PNG files, which decoders otherwise fill with grey without failing."""
    head = data[:8]
    if head.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in data[-1024:]:
            raise InputError(f"{path}: truncated JPEG (no end-of-image marker)")
    elif head == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-64:]:
            raise InputError(f"{path}: truncated PNG (no IEND chunk)")


def read_image(path: str | os.PathLike) -> Image:
    """Decode an image file, or raise InputError with a one-line reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: empty file (0 bytes)")
    _check_complete(path, data)
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise InputError(f"{path}: not a decodable image (corrupt, or not an image despite its extension)")
    if array.dtype == np.uint8:
        bit_depth, scale = 8, 255.0
    elif array.dtype == np.uint16:
        bit_depth, scale = 16, 65535.0
    elif array.dtype in (np.float32, np.float64):
        bit_depth, scale = 16, 1.0
    else:
        raise InputError(f"{path}: unsupported pixel type {array.dtype}")
    # IMREAD_UNCHANGED keeps depth and alpha but ignores EXIF orientation, so apply it here.
    orientation = _exif_orientation(path) if data[:2] == b"\xff\xd8" or data[:4] in (b"II*\x00", b"MM\x00*") or data[8:12] == b"WEBP" else 1
    array = _apply_orientation(array, orientation)
    image = array.astype(np.float32) / scale
    alpha = None
    grayscale = False
    if image.ndim == 2:
        grayscale = True
        rgb = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 1:
        grayscale = True
        rgb = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 2:  # grey + alpha
        grayscale = True
        rgb = np.repeat(image[:, :, :1], 3, axis=2)
        alpha = image[:, :, 1].copy()
    elif image.shape[2] == 3:
        rgb = image[:, :, ::-1]
    elif image.shape[2] == 4:
        rgb = image[:, :, 2::-1]
        alpha = image[:, :, 3].copy()
    else:
        raise InputError(f"{path}: unsupported channel count {image.shape[2]}")
    return Image(np.ascontiguousarray(np.clip(rgb, 0.0, 1.0)), alpha, bit_depth, grayscale, path)


def to_uint8(rgb: np.ndarray, mode: str = "round") -> np.ndarray:
    """Clamp to [0, 1] and quantise to 8 bits; `truncate` is what the official test scripts did."""
    scaled = np.clip(rgb, 0.0, 1.0) * 255.0
    if mode == "truncate":
        return scaled.astype(np.uint8)
    if mode == "round":
        return np.rint(scaled).astype(np.uint8)
    raise ValueError(f"unknown quantisation mode '{mode}' (use round or truncate)")


def encode_image(image: Image, fmt: str, quality: int | None = None) -> bytes:
    """Encode RGB(+alpha) floats in the original bit depth where the format allows."""
    fmt = fmt.lower().lstrip(".")
    fmt = {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)
    if fmt not in OUTPUT_FORMATS:
        raise InputError(f"unknown output format '{fmt}' (use {', '.join(OUTPUT_FORMATS)})")
    sixteen = image.bit_depth == 16 and fmt in ("png", "tif")
    scale, dtype = (65535.0, np.uint16) if sixteen else (255.0, np.uint8)
    rgb = np.clip(image.rgb, 0.0, 1.0)
    if image.grayscale:
        channels = [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]]
    else:
        channels = [rgb[:, :, ::-1]]
    if image.alpha is not None and fmt in ("png", "tif", "webp"):
        channels.append(image.alpha[:, :, None])
    array = np.concatenate(channels, axis=2) if len(channels) > 1 else channels[0]
    array = np.rint(array * scale).astype(dtype)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    params: list[int] = []
    if fmt == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality if quality is not None else 95)]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality if quality is not None else 95)]
    ok, buffer = cv2.imencode("." + fmt, array, params)
    if not ok:
        raise InputError(f"could not encode image as {fmt}")
    return buffer.tobytes()


def write_image(path: str | os.PathLike, image: Image | np.ndarray, quality: int | None = None) -> None:
    """Atomically write an Image (or a float RGB / uint8 RGB array) in the format of the suffix."""
    path = Path(path)
    if isinstance(image, np.ndarray):
        rgb = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
        image = Image(rgb, None, 8, False)
    atomic_write_bytes(path, encode_image(image, path.suffix or ".png", quality))
