"""face-comparer's on-the-fly augmentation: flip, scale 0.9-1.1 per axis, rotation +-20 deg,
shear +-6 deg, shift +-4 px, applied as one affine warp per image (OpenCV releases the GIL)."""
from __future__ import annotations

import math

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict


class AugmentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    flip: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 20.0
    shear_deg: float = 6.0
    shift_px: float = 4.0


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


def augment_batch(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Augment uint8 images (N, H, W) or (N, H, W, C); returns the same shape and dtype."""
    out = np.empty_like(images)
    size = images.shape[1]
    for i, img in enumerate(images):
        out[i] = cv2.warpAffine(img, random_affine(rng, size, cfg), (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101).reshape(img.shape)
    return out
