"""Images that code produced, checked on the host before the model sees them.

The sandbox applies the SPEC guards itself (drops extreme aspect ratios and tiny images,
upscales small ones), but what comes out of it is untrusted: here every image must decode
within PIL's decompression-bomb limit and pass the processor's own checks, and the trajectory's
image limit holds. Each image that is not shown leaves a note the model reads.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image

from codedance_jax.processing.image import ImageProcessingConfig, image_grid, to_rgb


def _decode(png: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # too large is an error here
        image = Image.open(io.BytesIO(png))
        image.load()
    return to_rgb(image)


def usable_images(pngs: list[bytes], room: int, image_config: ImageProcessingConfig
                  ) -> tuple[list[Image.Image], list[str]]:
    """The images the model may see (at most `room`), and one note per image not shown."""
    images, notes = [], []
    for number, png in enumerate(pngs, start=1):
        try:
            image = _decode(png)
            image_grid(image, image_config)  # the processor's checks, before any token is spent
        except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            notes.append(f"Produced image {number} was not shown: {err}.")
            continue
        if len(images) >= room:
            notes.append(f"Produced image {number} was not shown: the limit of images per conversation "
                         "is reached.")
            continue
        images.append(image)
    return images, notes
