"""The one image decoder every stage uses, and the one definition of the training crop.

``decode`` accepts what people actually upload: EXIF-rotated JPEGs, CMYK, 16-bit PNG, palette and
animated GIFs (first frame), and refuses empty, truncated, non-image, too-small and
decompression-bomb files with an ``ImageDecodeError`` that says why. ``cut_face`` applies the
training crop; ``preprocess_image`` is both, as the tensor store, enrolment and matching use it.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from settings import Params

cv2.setNumThreads(1)  # parallelism comes from our worker threads, not OpenCV's own pool

# A 250x250 LFW photo has 62,500 pixels; anything beyond this is refused as a decompression bomb.
MAX_PIXELS = 50_000_000
MIN_SIDE = 24  # smaller photos hold no usable face
# LFWcrop's box (left, top, right, bottom) on LFW's 250x250 originals; photos of another size
# get the same box scaled to their size (an aligned, LFW-framed portrait at any resolution).
LFW_FRAME = 250
LFW_CROP_BOX = (83, 92, 166, 175)
# Where dlib's HOG detector finds LFW's centred face on the frame (the median box over 300 seeded LFW
# photos, bench/face_finders.py): the box dlib's landmarks start from for an LFW-framed photo.
LFW_FACE_BOX = (77, 83, 181, 181)
# A face this flat (standard deviation in grey levels) is a blank image, not a face: refused without a
# detector (real LFW faces have 30 and more).
BLANK_STD = 2.0
# The tensor store's face side. Faces are cut at this size everywhere; a model with another input
# size resizes from it (model.inputs.resize_images), in training and in matching alike.
FACE_SIZE = 64


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why."""


class PreprocessConfig(Params):
    size: int = FACE_SIZE
    grey: bool = True
    crop_box: tuple[int, int, int, int] | None = LFW_CROP_BOX  # in LFW's 250x250 frame; None: resize only

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


class ChipConfig(Params):
    """dlib's aligned face chip (``tasks.chips``): the pretrained network's input, RGB."""

    kind: Literal["dlib_chip"] = "dlib_chip"
    size: int = 150
    padding: float = 0.25

    grey: ClassVar[bool] = False
    crop_box: ClassVar[None] = None

    @property
    def id(self) -> str:
        """Names the chip store: ``dlibchip150_pad0.25``."""
        return f"dlibchip{self.size}_pad{self.padding:g}"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.size, self.size, 3)


FaceInput = PreprocessConfig | ChipConfig


def face_input(recorded: dict) -> FaceInput:
    """A model's or a store's recorded face input (a manifest's ``preprocess``) as its config."""
    return ChipConfig(**recorded) if recorded.get("kind") == "dlib_chip" else PreprocessConfig(**recorded)


@dataclass(frozen=True)
class Decoded:
    width: int
    height: int
    pixels: np.ndarray  # uint8, cfg.shape


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(data: bytes) -> tuple[str, int, int, bool] | None:
    """(format, width, height, 8-bit grey/RGB?) from a JPEG or PNG header, without decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26:
        plain = data[24] == 8 and data[25] in (0, 2)  # 8-bit grey or RGB: no palette, alpha, 16-bit
        return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), plain
    if data[:3] != b"\xff\xd8\xff":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in _SOF:
            plain = data[i + 4] == 8 and data[i + 9] in (1, 3)  # 8-bit, grey or YCbCr (not CMYK)
            return ("JPEG", int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big"),
                    plain)
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(f"{width}x{height} exceeds {MAX_PIXELS} pixels (decompression bomb)")
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(f"{width}x{height} is too small for a face (< {MIN_SIDE} px)")


def _decode_opencv(data: bytes, fmt: str, grey: bool) -> np.ndarray | None:
    """OpenCV for complete 8-bit JPEG/PNG files (0.23-0.33 ms per LFW image against Pillow's
    0.37-0.45 ms); it applies EXIF orientation as the Pillow path does. None: let Pillow decide."""
    # OpenCV fills a truncated image with grey instead of failing: only complete files qualify.
    if not data.rstrip(b"\0\r\n ").endswith(_END_MARKERS[fmt]):
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if pixels is None:
        return None
    return pixels if grey else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def _decode_pillow(data: bytes, grey: bool) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            _check_size(img.width, img.height)
            img.seek(0)  # animated images: the first frame
            if img.format == "JPEG" and grey:
                img.draft("L", img.size)  # decode luma only: ~2x faster, same size
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale, don't clip
                wide = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if img.mode.startswith("I;16") or wide.max() > 255 else 255.0
                img = Image.fromarray(np.clip(wide * (255.0 / peak), 0, 255).astype(np.uint8))
            return np.asarray(img.convert("L" if grey else "RGB"), dtype=np.uint8)  # CMYK, RGBA, P, LA, ...
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image: unknown or unsupported format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"refused as a decompression bomb: {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageDecodeError(f"corrupt or truncated image data: {err}") from None


def decode(data: bytes, grey: bool = True) -> np.ndarray:
    """Any supported image -> uint8 (H, W) grey or (H, W, 3) RGB, EXIF orientation applied.

    Sizes are checked from the header before any pixel is decoded (bombs, too-small images)."""
    if not data:
        raise ImageDecodeError("empty file")
    header = header_size(data)
    if header:
        fmt, width, height, plain = header
        _check_size(width, height)
        if plain:
            pixels = _decode_opencv(data, fmt, grey)
            if pixels is not None:
                return pixels
    pixels = _decode_pillow(data, grey)
    _check_size(pixels.shape[1], pixels.shape[0])  # after EXIF rotation
    return pixels


def crop_box_for(width: int, height: int, crop_box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``crop_box`` (in LFW's 250x250 frame) scaled to a ``width`` x ``height`` photo, in pixels."""
    sx, sy = width / LFW_FRAME, height / LFW_FRAME
    left, top, right, bottom = crop_box
    return (int(round(left * sx)), int(round(top * sy)), int(round(right * sx)), int(round(bottom * sy)))


def cut_face(pixels: np.ndarray, crop_box: tuple[int, int, int, int] | None, size: int) -> np.ndarray:
    """The training crop: ``crop_box`` (None: the whole photo), resized to size x size with
    INTER_AREA, the right filter for shrinking. The crop comes first: resizing with a box would
    blend in pixels from outside it."""
    if crop_box:
        left, top, right, bottom = crop_box_for(pixels.shape[1], pixels.shape[0], crop_box)
        pixels = pixels[top:bottom, left:right]
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)


def preprocess_image(data: bytes, cfg: PreprocessConfig) -> Decoded:
    """Decode, crop and resize as the model expects; ImageDecodeError says why bytes are unusable."""
    pixels = decode(data, cfg.grey)
    return Decoded(pixels.shape[1], pixels.shape[0], cut_face(pixels, cfg.crop_box, cfg.size))
