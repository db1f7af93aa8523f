"""From any photo's bytes to the face tensors the model takes, with a clear reason when it can't.

Decoding accepts what people actually upload: EXIF-rotated JPEGs, CMYK, 16-bit PNG, palette and
animated GIFs (first frame), and refuses empty, truncated, non-image, too-small and
decompression-bomb files. Faces are then cut out with the training geometry:

  detect="none"     the photo is an aligned LFW-style portrait: LFWcrop's box (83, 92, 166, 175)
                    of 250x250, scaled to the photo's size (exactly the training preprocessing)
  detect="largest"  OpenCV's Haar cascade; the largest face
  detect="all"      every face the cascade finds

A detected box is mapped to the crop training used: on 300 LFW photos the LFWcrop box is centred
0.8% of the detection's width left of and 7.6% of its height below the detection's centre, and is
0.722 of its width wide (median; standard deviations 1.5%, 1.3% and 3.2%).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.preprocess import (
    MAX_PIXELS,
    ImageDecodeError,
    PreprocessConfig,
    fast_preprocess,
    header_size,
    preprocess_image,
)

DETECT_MODES = ("none", "largest", "all")
MIN_SIDE = 24  # smaller photos hold no usable face
LFW_CROP = (83, 92, 166, 175)
_CROP_FROM_DETECTION = (-0.0084, 0.0756, 0.7217)  # centre dx/w, centre dy/h, side/w


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the (EXIF-rotated) photo
    pixels: np.ndarray  # uint8 (size, size), grey


def decode_grey(data: bytes) -> np.ndarray:
    """Any supported image -> uint8 grey (H, W), EXIF orientation applied; ImageDecodeError otherwise."""
    if not data:
        raise ImageDecodeError("empty file")
    header = header_size(data)
    if header and header[1] * header[2] > MAX_PIXELS:
        raise ImageDecodeError(f"{header[1]}x{header[2]} exceeds {MAX_PIXELS} pixels (decompression bomb)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageDecodeError(f"{img.width}x{img.height} exceeds {MAX_PIXELS} pixels (decompression bomb)")
            img.seek(0)  # animated images: the first frame
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale, don't clip
                wide = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if img.mode.startswith("I;16") or wide.max() > 255 else 255.0
                grey = np.clip(wide * (255.0 / peak), 0, 255).astype(np.uint8)
            else:
                grey = np.asarray(img.convert("L"), dtype=np.uint8)  # CMYK, RGBA, P, LA, RGB
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image: unknown or unsupported format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"refused as a decompression bomb: {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageDecodeError(f"corrupt or truncated image data: {err}") from None
    if min(grey.shape) < MIN_SIDE:
        raise ImageDecodeError(f"{grey.shape[1]}x{grey.shape[0]} is too small for a face (< {MIN_SIDE} px)")
    return grey


_cascade = None


def _detector():
    global _cascade
    if _cascade is None:  # one per process; detectMultiScale is safe to call from several threads
        _cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if _cascade.empty():
            raise RuntimeError("OpenCV's Haar cascade file is missing from the opencv wheel")
    return _cascade


def _crop(grey: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """A square around (cx, cy), padded by reflection where it leaves the photo, resized (INTER_AREA)."""
    half = side / 2.0
    x0, y0, x1, y1 = (int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
    pad = max(0, -x0, -y0, x1 - grey.shape[1], y1 - grey.shape[0])
    if pad:
        grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    patch = grey[y0 + pad:y1 + pad, x0 + pad:x1 + pad]
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


def find_faces(grey: np.ndarray, detect: str = "none", size: int = 64) -> list[Face]:
    """The faces of a grey photo as model inputs; an empty list when detection finds none."""
    if detect not in DETECT_MODES:
        raise ValueError(f"detect must be one of {DETECT_MODES}, got {detect!r}")
    h, w = grey.shape
    if detect == "none":
        left, top, right, bottom = LFW_CROP
        sx, sy = w / 250.0, h / 250.0
        box = (int(round(left * sx)), int(round(top * sy)), int(round((right - left) * sx)),
               int(round((bottom - top) * sy)))
        patch = grey[box[1]:box[1] + box[3], box[0]:box[0] + box[2]]
        return [Face(box, cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA))]
    found = _detector().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                         minSize=(max(20, min(h, w) // 10),) * 2)
    boxes = sorted((tuple(int(v) for v in b) for b in found), key=lambda b: -b[2] * b[3])
    if detect == "largest":
        boxes = boxes[:1]
    dx, dy, scale = _CROP_FROM_DETECTION
    faces = []
    for x, y, bw, bh in boxes:
        cx, cy, side = x + bw / 2 + dx * bw, y + bh / 2 + dy * bh, scale * bw
        faces.append(Face((x, y, bw, bh), _crop(grey, cx, cy, side, size)))
    return faces


def faces_from_bytes(data: bytes, detect: str = "none", size: int = 64) -> list[Face]:
    """decode_grey + find_faces; ImageDecodeError when the bytes are unusable or hold no face."""
    left, top, right, bottom = LFW_CROP
    lfw_box = (left, top, right - left, bottom - top)
    header = header_size(data) if detect == "none" else None
    if header and header[1:] == (250, 250):  # an LFW-sized JPEG/PNG: training's own OpenCV path, one decode
        pixels = fast_preprocess(data, PreprocessConfig(size))
        if pixels is not None:
            return [Face(lfw_box, pixels)]
    grey = decode_grey(data)  # everything else, with a reason for whatever is wrong
    if detect == "none" and grey.shape == (250, 250):
        return [Face(lfw_box, preprocess_image(data, PreprocessConfig(size)).pixels)]
    faces = find_faces(grey, detect, size)
    if not faces:
        raise ImageDecodeError("no face found")
    return faces
