"""Qwen2.5-VL image preprocessing in numpy: resize to a multiple of the merge factor, normalise,
and cut into flattened patches. Output equals transformers' ``Qwen2VLImageProcessorPil``."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class ImageProcessingConfig:
    """Image options; defaults are transformers' Qwen2-VL processor defaults."""
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"image config: {name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"image config: min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this so that patches merge evenly."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one pixel_values row: 3 channels x temporal x patch x patch."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_preprocessor_config(cls, config: dict[str, Any]) -> "ImageProcessingConfig":
        """Reads a checkpoint's preprocessor_config.json dict (old ``min_pixels``/``max_pixels``
        keys or the newer ``size: {shortest_edge, longest_edge}``; the flat keys win, as in
        transformers). Keys this class does not model are ignored."""
        size = config.get("size") or {}
        values = {
            "min_pixels": config.get("min_pixels", size.get("shortest_edge")),
            "max_pixels": config.get("max_pixels", size.get("longest_edge")),
            "image_mean": tuple(config["image_mean"]) if "image_mean" in config else None,
            "image_std": tuple(config["image_std"]) if "image_std" in config else None,
        }
        for key in ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor"):
            values[key] = config.get(key)
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_preprocessor_config(self) -> dict[str, Any]:
        """preprocessor_config.json as transformers' Qwen2-VL image processor reads it."""
        return {"image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "do_rescale": True,
                "do_normalize": True, "do_convert_rgb": True, "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels,
                "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
                "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
                "merge_size": self.merge_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
                "rescale_factor": self.rescale_factor}

    @classmethod
    def for_checkpoint(cls, ckpt_dir: str) -> "ImageProcessingConfig":
        """The checkpoint's preprocessor_config.json (what its model was trained with), else the defaults."""
        path = os.path.join(ckpt_dir, PREPROCESSOR_CONFIG)
        if not os.path.exists(path):
            return cls()
        with open(path) as f:
            try:
                return cls.from_preprocessor_config(json.load(f))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}: not a usable preprocessor config: {err}") from err


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible.

    Raises ValueError for an aspect ratio above 200 or a side shorter than ``factor`` (such an
    image cannot hold one merged patch without distortion; the sandbox drops them too).
    """
    if min(height, width) < factor:
        raise ValueError(f"image of size {height}x{width} (HxW) has a side shorter than {factor} px")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"image of size {height}x{width} (HxW) has aspect ratio "
                         f"{max(height, width) / min(height, width):.1f} > {MAX_ASPECT_RATIO}")
    new_h = round(height / factor) * factor
    new_w = round(width / factor) * factor
    if new_h * new_w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / scale / factor) * factor)
        new_w = max(factor, math.floor(width / scale / factor) * factor)
    elif new_h * new_w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * scale / factor) * factor
        new_w = math.ceil(width * scale / factor) * factor
    return new_h, new_w


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy; transparency is composited onto white (as transformers does)."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_for_model(image: Image.Image, config: ImageProcessingConfig = ImageProcessingConfig()
                     ) -> Image.Image:
    """The RGB image at the size the model sees (what code in the sandbox should work on)."""
    rgb = to_rgb(image)
    height, width = smart_resize(rgb.height, rgb.width, config.factor, config.min_pixels, config.max_pixels)
    return rgb.resize((width, height), resample=Image.Resampling.BICUBIC)


def patchify(pixels: np.ndarray, config: ImageProcessingConfig = ImageProcessingConfig()
             ) -> tuple[np.ndarray, np.ndarray]:
    """Cuts a normalised [C, H, W] still image into rows of (C, T, p, p).

    The image is repeated ``temporal_patch_size`` times along time; rows are ordered so the
    merge_size x merge_size patches of each merge block are contiguous.
    Returns (pixel_values [h*w, C*T*p*p], grid_thw [1, 3] = [[1, H/p, W/p]]).
    """
    channels, height, width = pixels.shape
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_h, grid_w = height // p, width // p
    blocks = pixels.reshape(channels, grid_h // m, m, p, grid_w // m, m, p)
    blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)  # (block_h, block_w, m_h, m_w, C, p, p)
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], blocks.shape[:5] + (t, p, p))
    rows = frames.reshape(grid_h * grid_w, channels * t * p * p)
    return np.ascontiguousarray(rows, dtype=np.float32), np.array([[1, grid_h, grid_w]], np.int64)


def preprocess_image(image: Image.Image, config: ImageProcessingConfig = ImageProcessingConfig()
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One PIL image -> (pixel_values float32 [h*w, 1176], grid_thw int64 [1, 3])."""
    resized = np.asarray(resize_for_model(image, config)).transpose(2, 0, 1)  # [C, H, W] uint8
    # Rescale in float64 then cast, then normalise in float32: transformers' exact arithmetic.
    scaled = (resized.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, np.float32)[:, None, None]
    std = np.asarray(config.image_std, np.float32)[:, None, None]
    return patchify((scaled - mean) / std, config)


def preprocess_images(images: Sequence[Image.Image], config: ImageProcessingConfig = ImageProcessingConfig()
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Images in order -> (concatenated pixel_values [sum h*w, 1176], grids [n_images, 3])."""
    pixel_values = [np.zeros((0, config.patch_dim), np.float32)]
    grids = [np.zeros((0, 3), np.int64)]
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {index} is a {type(image).__name__}, expected a PIL image")
        try:
            values, grid = preprocess_image(image, config)
        except ValueError as err:
            raise ValueError(f"image {index}: {err}") from err
        pixel_values.append(values)
        grids.append(grid)
    return np.concatenate(pixel_values), np.concatenate(grids)


def image_grid(image: Image.Image, config: ImageProcessingConfig = ImageProcessingConfig()) -> np.ndarray:
    """grid_thw [3] that ``preprocess_image`` will give this image, without processing pixels."""
    height, width = smart_resize(image.height, image.width, config.factor, config.min_pixels, config.max_pixels)
    return np.array([1, height // config.patch_size, width // config.patch_size], np.int64)


def image_token_count(grid_thw, merge_size: int = 2) -> int:
    """Number of ``<|image_pad|>`` tokens (merged patches) an image with this grid takes."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // merge_size**2
