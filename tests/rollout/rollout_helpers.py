"""Helpers for the rollout tests (imported by name: tests/ is not a package)."""
import numpy as np
from PIL import Image


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def smooth_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """Low-frequency content, which survives the sandbox's JPEG copy of the input image."""
    return noise_image(4, 4, seed).resize((width, height), Image.Resampling.BICUBIC)
