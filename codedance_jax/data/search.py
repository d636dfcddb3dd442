"""Visual search: one coloured mark among grey clutter and marks of other colours; where is it?

Easy: the mark is a large square, plain to see. Hard: it is a dot a few pixels wide in a busy
image; the code finds the pixels of its colour and reports their quadrant.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from codedance_jax.data.shapes import COLOURS
from codedance_jax.data.trajectories import EASY, HARD, Task, code_answer, direct_answer

MARGIN = 16  # px the mark keeps from the image's centre lines, so its quadrant is unambiguous
# One wording for both sizes: only the picture says whether the mark is plain to see.
QUESTION = "Where is the {colour} mark? Answer top-left, top-right, bottom-left or bottom-right."

_FIND_CODE = """import numpy as np

pixels = np.asarray(input_image.convert("RGB"), dtype=int)
ys, xs = np.nonzero(np.abs(pixels - np.array({rgb})).sum(axis=-1) < 90)
height, width = pixels.shape[:2]
print(("top" if ys.mean() < height / 2 else "bottom") + "-" + ("left" if xs.mean() < width / 2 else "right"))"""


def _quadrant(x: int, y: int, width: int, height: int) -> str:
    return ("top" if y < height / 2 else "bottom") + "-" + ("left" if x < width / 2 else "right")


def _search_image(rng: np.random.Generator, colour: str, radius: int) -> tuple[Image.Image, str]:
    width, height = (int(s) for s in rng.integers(240, 289, size=2))
    image = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(25, 45))):  # grey clutter
        x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(3, 9))
        grey = int(rng.integers(90, 190))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, grey))
    others = [name for name in COLOURS if name != colour]
    for _ in range(int(rng.integers(2, 6))):  # marks of other colours
        x, y = int(rng.integers(8, width - 8)), int(rng.integers(8, height - 8))
        draw.rectangle((x - 4, y - 4, x + 4, y + 4), fill=COLOURS[str(rng.choice(others))])
    # The mark goes last, on top, in one quadrant, clear of the centre lines and the border.
    x = int(rng.choice([rng.integers(radius + 4, width // 2 - MARGIN), rng.integers(width // 2 + MARGIN,
                                                                                       width - radius - 4)]))
    y = int(rng.choice([rng.integers(radius + 4, height // 2 - MARGIN), rng.integers(height // 2 + MARGIN,
                                                                                        height - radius - 4)]))
    draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=COLOURS[colour])
    return image, _quadrant(x, y, width, height)


def search_large_task(rng: np.random.Generator, fail_first: bool) -> Task:
    colour = str(rng.choice(list(COLOURS)))
    image, answer = _search_image(rng, colour, radius=int(rng.integers(20, 30)))
    return Task("search_large", EASY, image, QUESTION.format(colour=colour), answer,
                direct_answer(f"The large {colour} square is in the {answer} part of the image.", answer))


def search_small_task(rng: np.random.Generator, fail_first: bool) -> Task:
    colour = str(rng.choice(list(COLOURS)))
    image, answer = _search_image(rng, colour, radius=3)
    plan = f"The {colour} dot is tiny among the clutter; I will find its pixels by colour and locate them."
    code = _FIND_CODE.format(rgb=list(COLOURS[colour]))
    return Task("search_small", HARD, image, QUESTION.format(colour=colour), answer,
                code_answer(plan, code, f"The {colour} pixels are in the {answer} quadrant.", answer, fail_first))
