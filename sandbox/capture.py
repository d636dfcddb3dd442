"""Turns what user code shows (plots, PIL images, arrays) into guarded PNG bytes.

Runs inside the interpreter process. The guards keep images the vision tower can take:
extreme aspect ratios and tiny images are dropped, small ones upscaled, huge ones scaled
down; each drop is reported on stderr so the model learns why an image is missing.
"""
from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image

MAX_ASPECT = 200
MIN_SIDE = 28        # below this the image is dropped
UPSCALE_BELOW = 56   # below this the short side is upscaled to UPSCALE_TO
UPSCALE_TO = 112
FIGURE_DPI = 150


def array_to_image(value: np.ndarray):
    """A 2-D or 3-D array as a PIL image (3/4 channels read as cv2's BGR/BGRA), else None."""
    array = value
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or array.size == 0:
        return None
    if array.ndim == 3 and array.shape[2] not in (3, 4):
        return None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if array.min() >= 0.0 and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        array = np.clip(array, 0, 255).astype(np.uint8)
    else:
        return None
    if array.ndim == 3:
        order = [2, 1, 0] if array.shape[2] == 3 else [2, 1, 0, 3]
        array = array[:, :, order]
    return Image.fromarray(np.ascontiguousarray(array))


def as_image(value):
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return array_to_image(value)
    return None


def _png_ready(image: Image.Image) -> Image.Image:
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    return image.convert("RGB")


class ImageSink:
    """Collects the images of one call, applying the guards and the per-call caps."""

    def __init__(self, max_images: int, max_pixels: int, max_png_bytes: int):
        self.max_images = max_images
        self.max_pixels = max_pixels
        self.max_png_bytes = max_png_bytes
        self.pngs: list[bytes] = []

    def reset(self) -> None:
        self.pngs = []

    def _drop(self, why: str) -> None:
        print(f"[image not returned: {why}]", file=sys.stderr)

    def add(self, value) -> bool:
        """Capture value if it is an image; False when it is not one."""
        image = as_image(value)
        if image is None:
            return False
        if len(self.pngs) >= self.max_images:
            self._drop(f"at most {self.max_images} images per call")
            return True
        width, height = image.size
        bomb_limit = Image.MAX_IMAGE_PIXELS
        if bomb_limit and width * height > bomb_limit:
            self._drop(f"{width}x{height} exceeds PIL's decompression-bomb limit")
            return True
        if min(width, height) == 0 or max(width, height) / min(width, height) > MAX_ASPECT:
            self._drop(f"{width}x{height} has an aspect ratio above {MAX_ASPECT}")
            return True
        if min(width, height) < MIN_SIDE:
            self._drop(f"{width}x{height} has a side below {MIN_SIDE} px")
            return True
        if min(width, height) < UPSCALE_BELOW:
            scale = UPSCALE_TO / min(width, height)
            image = image.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
        if image.size[0] * image.size[1] > self.max_pixels:
            scale = (self.max_pixels / (image.size[0] * image.size[1])) ** 0.5
            image = image.resize((max(1, int(image.size[0] * scale)),
                                  max(1, int(image.size[1] * scale))), Image.BILINEAR)
        buffer = io.BytesIO()
        _png_ready(image).save(buffer, format="PNG", compress_level=3)
        png = buffer.getvalue()
        if len(png) > self.max_png_bytes:
            self._drop(f"PNG of {len(png)} bytes exceeds {self.max_png_bytes}")
            return True
        self.pngs.append(png)
        return True

    def add_figure(self, figure) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
        buffer.seek(0)
        with Image.open(buffer) as image:
            image.load()
            self.add(image)

    def display(self, *values) -> None:
        """Jupyter-style display(): images are captured, anything else is printed."""
        for value in values:
            if not self.add(value):
                print(repr(value))


def install(sink: ImageSink, namespace: dict) -> None:
    """Route every way of showing an image to the sink (there is no display to show it on)."""
    import cv2
    import matplotlib.figure
    import matplotlib.pyplot as plt

    def plt_show(*args, **kwargs):
        if plt.get_fignums():
            figure = plt.gcf()
            sink.add_figure(figure)
            plt.close(figure)

    def figure_show(self, *args, **kwargs):
        sink.add_figure(self)
        plt.close(self)

    def pil_show(self, *args, **kwargs):
        sink.add(self)

    def cv2_imshow(name, image):
        sink.add(np.asarray(image))

    plt.show = plt_show
    matplotlib.figure.Figure.show = figure_show
    Image.Image.show = pil_show
    cv2.imshow = cv2_imshow
    cv2.waitKey = lambda *args, **kwargs: -1
    cv2.destroyAllWindows = lambda *args, **kwargs: None
    cv2.destroyWindow = lambda *args, **kwargs: None
    namespace["display"] = sink.display
