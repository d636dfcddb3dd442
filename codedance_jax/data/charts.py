"""Bar charts drawn with PIL and the task of reading one bar's value.

Easy: the value is printed above each bar, so it is read off directly. Hard: only the axis ends
(0 and 10) are marked, between unlabelled gridlines; the code measures the bar against the axis
lines in pixels.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from codedance_jax.data.shapes import BACKGROUNDS, COLOURS
from codedance_jax.data.trajectories import EASY, HARD, Task, code_answer, direct_answer

MAX_VALUE = 10
GRID = (200, 200, 200)
INK = (0, 0, 0)
# Asked of labelled (easy) and unlabelled (hard) charts alike: only the picture tells them apart.
BAR_QUESTION = ("The axis runs from 0 at the bottom line to {max_value} at the top line. What is the value of the "
                "{colour} bar? Answer with a number.")

# The two black lines spanning the plot are the rows that are mostly dark: the bottom one is 0,
# the top one MAX_VALUE. A bar's top is its first row that is mostly its colour.
_READ_CODE = """import numpy as np

pixels = np.asarray(input_image.convert("RGB"), dtype=int)
dark = pixels.sum(axis=-1) < 200
lines = np.flatnonzero(dark.mean(axis=1) > 0.5)
top, bottom = lines[lines < lines.mean()].mean(), lines[lines > lines.mean()].mean()
bar = np.abs(pixels - np.array({rgb})).sum(axis=-1) < 90
rows = np.flatnonzero(bar.sum(axis=1) >= 0.5 * bar.sum(axis=1).max())
print(round({max_value} * (bottom - rows.min()) / (bottom - top)))"""


def _chart(rng: np.random.Generator, labelled: bool) -> tuple[Image.Image, dict[str, int]]:
    width, height = int(rng.integers(200, 281)), int(rng.integers(200, 261))
    names = [str(n) for n in rng.permutation(list(COLOURS))[:int(rng.integers(3, len(COLOURS) + 1))]]
    values = {name: int(rng.integers(1, MAX_VALUE + 1)) for name in names}
    left, right, top, bottom = 28, width - 12, 24, height - 16
    image = Image.new("RGB", (width, height), BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    draw = ImageDraw.Draw(image)
    unit = (bottom - top) / MAX_VALUE
    for value in range(1, MAX_VALUE):
        y = round(bottom - value * unit)
        draw.line((left, y, right, y), fill=GRID, width=1)
    slot = (right - left) / len(names)
    for k, name in enumerate(names):
        x0, x1 = round(left + (k + 0.2) * slot), round(left + (k + 0.8) * slot)
        y = round(bottom - values[name] * unit)
        draw.rectangle((x0, y, x1, bottom), fill=COLOURS[name])
        if labelled:
            draw.text(((x0 + x1) / 2, y - 2), str(values[name]), fill=INK, anchor="ms")
    for value, y in ((0, bottom), (MAX_VALUE, top)):
        draw.line((left, y, right, y), fill=INK, width=2)
        draw.text((left - 4, y), str(value), fill=INK, anchor="rm")
    return image, values


def bar_labelled_task(rng: np.random.Generator, fail_first: bool) -> Task:
    image, values = _chart(rng, labelled=True)
    colour = str(rng.choice(list(values)))
    answer = str(values[colour])
    return Task("bar_labelled", EASY, image, BAR_QUESTION.format(colour=colour, max_value=MAX_VALUE),
                answer, direct_answer(f"The label above the {colour} bar reads {answer}.", answer))


def bar_value_task(rng: np.random.Generator, fail_first: bool) -> Task:
    image, values = _chart(rng, labelled=False)
    colour = str(rng.choice(list(values)))
    answer = str(values[colour])
    plan = (f"The gridlines are not labelled; I will measure the {colour} bar's height in pixels "
            f"against the 0 and {MAX_VALUE} axis lines.")
    code = _READ_CODE.format(rgb=list(COLOURS[colour]), max_value=MAX_VALUE)
    return Task("bar_value", HARD, image, BAR_QUESTION.format(colour=colour, max_value=MAX_VALUE), answer,
                code_answer(plan, code, f"The {colour} bar reaches {answer}.", answer, fail_first))
