"""Image capture and its guards, as SPEC.md section 3 describes, end to end through the pool."""
import io

import numpy as np
import pytest
from PIL import Image

from sandbox import capture


def decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_plt_show_saves_the_current_figure_at_150_dpi(pool, session_id):
    result = pool.execute(session_id, "import matplotlib.pyplot as plt\n"
                                      "plt.figure(figsize=(4, 2))\nplt.plot([1, 3, 2])\n"
                                      "plt.show()\nprint(plt.get_fignums())")
    assert result.error is None and result.stdout == "[]\n"  # shown figures are closed
    (png,) = result.images
    width, height = decode(png).size
    assert 450 <= width <= 620 and 230 <= height <= 320  # 4x2 in at 150 dpi, tight bbox


def test_pil_show_display_and_trailing_image(pool, session_id):
    result = pool.execute(session_id, "from PIL import Image\n"
                                      "a = Image.new('RGB', (100, 80), (0, 255, 0))\n"
                                      "a.show()\ndisplay(a, 'caption')\na")
    assert result.error is None
    assert result.stdout == "'caption'\n"
    assert [decode(p).size for p in result.images] == [(100, 80)] * 3
    assert decode(result.images[0]).getpixel((5, 5)) == (0, 255, 0)


def test_arrays_are_bgr_and_floats_are_scaled(pool, session_id):
    result = pool.execute(session_id, "import numpy as np\n"
                                      "bgr = np.zeros((60, 70, 3), np.uint8); bgr[..., 2] = 255\n"
                                      "display(bgr)\nnp.full((60, 60), 0.5)")
    red, gray = (decode(p) for p in result.images)
    assert red.getpixel((0, 0)) == (255, 0, 0)  # BGR red comes back as RGB red
    assert gray.mode == "L" and gray.getpixel((0, 0)) in (127, 128)


def test_cv2_imshow_is_captured(pool, session_id):
    result = pool.execute(session_id, "import cv2, numpy as np\n"
                                      "cv2.imshow('w', np.zeros((64, 64, 3), np.uint8))\n"
                                      "cv2.waitKey(0)\ncv2.destroyAllWindows()")
    assert result.error is None and len(result.images) == 1


@pytest.mark.parametrize("shape, expected, note", [
    ((30, 7000), None, "aspect ratio"),
    ((20, 100), None, "below 28"),
    ((40, 100), (280, 112), None),       # short side upscaled to 112
    ((6000, 5000), None, None),          # scaled down under max_image_pixels (checked below)
], ids=["aspect", "tiny", "small", "huge"])
def test_image_guards(pool, session_id, shape, expected, note):
    result = pool.execute(session_id, f"import numpy as np\nnp.zeros({shape}, np.uint8)")
    if note is not None:
        assert result.images == [] and note in result.stderr
        return
    (png,) = result.images
    size = decode(png).size
    if expected is not None:
        assert size == expected
    else:
        assert size[0] * size[1] <= pool.limits.max_image_pixels
        assert abs(size[0] / size[1] - 5000 / 6000) < 0.01


def test_decompression_bomb_limit_is_respected(pool, session_id):
    result = pool.execute(session_id, "from PIL import Image\nImage.MAX_IMAGE_PIXELS = 1000\n"
                                      "Image.new('L', (40, 40))")
    assert result.images == [] and "decompression-bomb" in result.stderr


def test_images_per_call_are_capped(pool, session_id):
    result = pool.execute(session_id, "import numpy as np\n"
                                      "for i in range(12): display(np.zeros((64, 64), np.uint8))")
    assert len(result.images) == pool.limits.max_images
    assert result.stderr.count("at most") == 12 - pool.limits.max_images


def test_non_image_arrays_print(pool, session_id):
    result = pool.execute(session_id, "import numpy as np\nnp.arange(3)")
    assert result.images == [] and result.stdout == "array([0, 1, 2])\n"


# Conversion rules, directly (no pool needed).

def test_array_conversion_rules():
    assert capture.array_to_image(np.zeros((4, 4, 2))) is None
    assert capture.array_to_image(np.zeros((0, 4))) is None
    assert capture.array_to_image(np.array([["a"]])) is None
    assert capture.array_to_image(np.ones((4, 4), bool)).getpixel((0, 0)) == 255
    assert capture.array_to_image(np.full((4, 4), 300, np.int32)).getpixel((0, 0)) == 255
    assert capture.array_to_image(np.full((4, 4), 7.0)).getpixel((0, 0)) == 7  # > 1: not scaled
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 255, 255
    assert capture.array_to_image(bgra).getpixel((0, 0)) == (0, 0, 255, 255)
    assert capture.array_to_image(np.full((4, 4, 1), np.nan)).getpixel((0, 0)) == 0
