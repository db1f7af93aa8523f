"""On-the-fly augmentation. face-comparer's geometric set: flip, scale 0.9-1.1 per axis, rotation
+-20 deg, shear +-6 deg, shift +-4 px, applied as one affine warp per image (OpenCV releases the
GIL); the "strong" preset adds brightness and contrast jitter and random erasing (a grey-noise
rectangle of 2-20% of the image, as in Zhong et al.'s random erasing); "aligned" is the mild set for
dlib's aligned chips (flip, scale 0.95-1.05, rotation +-5 deg, shift +-4 px of 150)."""
from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

Augmentation = Literal["none", "face_comparer", "strong", "aligned"]


class AugmentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    flip: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 20.0
    shear_deg: float = 6.0
    shift_px: float = 4.0
    brightness: float = 0.0  # +- grey levels
    contrast: tuple[float, float] = (1.0, 1.0)
    erase_probability: float = 0.0


PRESETS: dict[str, AugmentConfig | None] = {
    "none": None,
    "face_comparer": AugmentConfig(),
    "strong": AugmentConfig(brightness=25.0, contrast=(0.7, 1.3), erase_probability=0.5),
    # aligned chips are upright and scaled by their landmarks already: only what alignment leaves over
    "aligned": AugmentConfig(scale=(0.95, 1.05), rotation_deg=5.0, shear_deg=0.0, shift_px=4.0),
}


def random_affine(rng: np.random.Generator, size: int, cfg: AugmentConfig) -> np.ndarray:
    """A 2x3 matrix: flip, scale, shear and rotation about the image centre, then a shift."""
    sx, sy = rng.uniform(*cfg.scale, size=2)
    if cfg.flip and rng.random() < 0.5:
        sx = -sx
    rot = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    shear = math.radians(rng.uniform(-cfg.shear_deg, cfg.shear_deg))
    linear = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]]) \
        @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]]) @ np.diag([sx, sy])
    centre = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    shift = rng.uniform(-cfg.shift_px, cfg.shift_px, size=2)
    return np.hstack([linear, (centre - linear @ centre + shift)[:, None]]).astype(np.float32)


def _photometric(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    out = img.astype(np.float32)
    if cfg.contrast != (1.0, 1.0) or cfg.brightness:
        mean = out.mean()
        out = (out - mean) * rng.uniform(*cfg.contrast) + mean + rng.uniform(-cfg.brightness, cfg.brightness)
    if cfg.erase_probability and rng.random() < cfg.erase_probability:
        h, w = out.shape[:2]
        area = rng.uniform(0.02, 0.2) * h * w
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        eh, ew = min(h, int(round(math.sqrt(area * aspect)))), min(w, int(round(math.sqrt(area / aspect))))
        top, left = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
        out[top:top + eh, left:left + ew] = rng.uniform(0, 255, (eh, ew) + out.shape[2:])
    return np.clip(out, 0, 255).astype(np.uint8)


def augment_batch(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Augment uint8 images (N, H, W) or (N, H, W, C); returns the same shape and dtype."""
    out = np.empty_like(images)
    size = images.shape[1]
    photometric = cfg.brightness or cfg.contrast != (1.0, 1.0) or cfg.erase_probability
    for i, img in enumerate(images):
        warped = cv2.warpAffine(img, random_affine(rng, size, cfg), (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101).reshape(img.shape)
        out[i] = _photometric(warped, rng, cfg) if photometric else warped
    return out
