"""Decode and preprocess one face image exactly as training and matching expect it."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

cv2.setNumThreads(1)  # parallelism comes from worker processes, not OpenCV's own pool

# A 250x250 LFW photo has 62,500 pixels; anything beyond this is refused as a decompression bomb.
MAX_PIXELS = 50_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why."""


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 64
    grey: bool = True
    crop_box: tuple[int, int, int, int] | None = (83, 92, 166, 175)  # LFWcrop's box

    @property
    def id(self) -> str:
        """Names the tensor store: ``grey64_crop83-92-166-175``."""
        name = f"{'grey' if self.grey else 'rgb'}{self.size}"
        if self.crop_box:
            name += "_crop" + "-".join(str(v) for v in self.crop_box)
        return name

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.size, self.size) if self.grey else (self.size, self.size, 3)


@dataclass(frozen=True)
class Decoded:
    width: int
    height: int
    pixels: np.ndarray  # uint8, cfg.shape


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) read from a JPEG or PNG header without decoding; None otherwise."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:3] != b"\xff\xd8\xff":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in _SOF:
            return "JPEG", int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _fast_path(data: bytes, fmt: str, cfg: PreprocessConfig) -> np.ndarray | None:
    """OpenCV for complete 8-bit JPEG/PNG files (0.23-0.33 ms per LFW image against Pillow's
    0.37-0.45 ms), with INTER_AREA, the right filter for shrinking. OpenCV applies EXIF
    orientation as Pillow's path does. None means: let Pillow decide (and explain failures)."""
    # OpenCV fills a truncated image with grey instead of failing: only complete files qualify.
    if not data.rstrip(b"\0\r\n ").endswith(_END_MARKERS[fmt]):
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if cfg.grey else cv2.IMREAD_COLOR)
    if pixels is None:
        return None
    if cfg.crop_box:
        left, top, right, bottom = cfg.crop_box
        if right > pixels.shape[1] or bottom > pixels.shape[0]:
            return None
        pixels = pixels[top:bottom, left:right]
    pixels = cv2.resize(pixels, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA)
    return pixels if cfg.grey else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def fast_preprocess(data: bytes, cfg: PreprocessConfig) -> np.ndarray | None:
    """The OpenCV path alone: pixels for a complete 8-bit JPEG/PNG inside the pixel limit, else None."""
    header = header_size(data) if data else None
    if not header or header[1] * header[2] > MAX_PIXELS:
        return None
    box = cfg.crop_box
    if box and (box[2] > header[1] or box[3] > header[2]):
        return None
    return _fast_path(data, header[0], cfg)


def _check_size(width: int, height: int, cfg: PreprocessConfig) -> None:
    """Refuse decompression bombs and images too small for the crop box, before decoding."""
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(f"{width}x{height} exceeds {MAX_PIXELS} pixels (decompression bomb)")
    box = cfg.crop_box
    if box and (box[2] > width or box[3] > height):
        raise ImageDecodeError(f"{width}x{height} is smaller than the crop box {box}")


def preprocess_image(data: bytes, cfg: PreprocessConfig) -> Decoded:
    """Crop, convert and resize; raises ImageDecodeError with the reason for unusable bytes."""
    if not data:
        raise ImageDecodeError("empty file")
    header = header_size(data)
    if header:
        fmt, width, height = header
        _check_size(width, height, cfg)
        fast = _fast_path(data, fmt, cfg)
        if fast is not None:
            return Decoded(width, height, fast)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            width, height = img.size
            _check_size(width, height, cfg)
            box = cfg.crop_box
            mode = "L" if cfg.grey else "RGB"
            if img.format == "JPEG":
                img.draft(mode, img.size)  # decode luma only for grey: ~2x faster, same size
            img = ImageOps.exif_transpose(img).convert(mode)
            if box:  # crop first: resize(box=...) would blend in pixels from outside the box
                img = img.crop(box)
            img = img.resize((cfg.size, cfg.size), Image.BOX)  # area averaging, like INTER_AREA
            pixels = np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a usable image: unknown or unsupported format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"not a usable image: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt data
        raise ImageDecodeError(f"corrupt image data: {err}") from None
    return Decoded(width, height, pixels)
