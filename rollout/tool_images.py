"""Images that code produced, made safe for the model (SPEC section 3 guards): undecodable images,
an aspect ratio above 200 or a side under 28 px are dropped; a side under 56 px is upscaled so
the short side is 112 px. Every dropped image leaves a note the model reads."""
from __future__ import annotations

import io
import warnings

from PIL import Image

from codedance_jax.processing.image import ImageProcessingConfig, image_grid, to_rgb

MAX_ASPECT_RATIO = 200
MIN_SIDE = 28
UPSCALE_BELOW = 56
UPSCALED_SHORT_SIDE = 112


def _decode(png: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # too large is an error here
        image = Image.open(io.BytesIO(png))
        image.load()
    return to_rgb(image)


def _guarded(image: Image.Image) -> Image.Image:
    short, long = sorted(image.size)
    if long / short > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {long / short:.0f} is above {MAX_ASPECT_RATIO}")
    if short < MIN_SIDE:
        raise ValueError(f"a side of {short} px is under {MIN_SIDE} px")
    if short < UPSCALE_BELOW:
        scale = UPSCALED_SHORT_SIDE / short
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.BICUBIC)
    return image


def usable_images(pngs: list[bytes], room: int, image_config: ImageProcessingConfig
                  ) -> tuple[list[Image.Image], list[str]]:
    """The images the model may see (at most `room`), and one note per dropped image."""
    images, notes = [], []
    for number, png in enumerate(pngs, start=1):
        try:
            image = _guarded(_decode(png))
            image_grid(image, image_config)  # the processor's own checks, before any token is spent
        except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            notes.append(f"Produced image {number} was not shown: {err}.")
            continue
        if len(images) >= room:
            notes.append(f"Produced image {number} was not shown: the limit of images per conversation "
                         "is reached.")
            continue
        images.append(image)
    return images, notes
