"""Decode and preprocess one face image exactly as training and matching expect it."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def preprocess_image(data: bytes, cfg: PreprocessConfig) -> Decoded:
    """Crop, convert and resize; raises ImageDecodeError with the reason for unusable bytes."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(f"{width}x{height} exceeds {MAX_PIXELS} pixels (decompression bomb)")
            mode = "L" if cfg.grey else "RGB"
            if img.format == "JPEG":
                img.draft(mode, img.size)  # decode luma only for grey: ~2x faster, same size
            img = img.convert(mode)
            box = cfg.crop_box
            if box and (box[2] > width or box[3] > height):
                raise ImageDecodeError(f"{width}x{height} is smaller than the crop box {box}")
            if box:  # crop first: resize(box=...) would blend in pixels from outside the box
                img = img.crop(box)
            img = img.resize((cfg.size, cfg.size), Image.BILINEAR)
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
