"""Shapes pictures (coloured circles, squares and triangles on a plain background) and their tasks.

Easy: is there a triangle; how many shapes when there are a few large ones. Hard (code): how many
red squares among up to six shapes, the colour of the largest shape, how many shapes of one colour
among many small ones.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from codedance_jax.data.trajectories import EASY, HARD, Task, code_answer, direct_answer

COLOURS = {"red": (220, 50, 47), "green": (46, 160, 67), "blue": (38, 110, 220), "yellow": (240, 200, 40)}
KINDS = ("circle", "square", "triangle")
BACKGROUNDS = ((255, 255, 255), (236, 236, 236), (250, 244, 228))
SIDE_RANGE = (128, 288)    # image width and height, px
GAP = 6                    # px between shape boxes, so shapes never touch
LARGEST_MARGIN = 1.3       # "largest shape" is asked only when it is this much larger than the next
NUMBERS = ("zero", "one", "two", "three", "four")
# Asked of a few large shapes (easy) and of many small ones (hard) alike.
COUNT_COLOUR_QUESTION = "How many {colour} shapes are there? Answer with a number."

# A pixel belongs to a colour when its summed absolute RGB difference is below this (JPEG keeps
# flat colours well within it); shapes are told apart by how much of their bounding box they fill
# (square 1, circle ~0.79, triangle 0.5).
_COUNT_CODE = """import numpy as np
from scipy import ndimage

pixels = np.asarray(input_image.convert("RGB"), dtype=int)
mask = np.abs(pixels - np.array({rgb})).sum(axis=-1) < 60
labels, _ = ndimage.label(mask)
fills = [(labels[box] == k + 1).mean() for k, box in enumerate(ndimage.find_objects(labels))]
kinds = ["square" if f > 0.9 else "circle" if f > 0.65 else "triangle" for f in fills]
print(kinds.count("{kind}"))"""

_LARGEST_CODE = """import numpy as np
from scipy import ndimage

pixels = np.asarray(input_image.convert("RGB"), dtype=int)
largest = {{}}
for name, rgb in {colours}.items():
    labels, _ = ndimage.label(np.abs(pixels - np.array(rgb)).sum(axis=-1) < 60)
    largest[name] = np.bincount(labels.ravel())[1:].max(initial=0)
print(max(largest, key=largest.get))"""

# Small shapes blur at their edges in a JPEG: a looser colour test, and specks are not shapes.
_COUNT_MANY_CODE = """import numpy as np
from scipy import ndimage

pixels = np.asarray(input_image.convert("RGB"), dtype=int)
mask = np.abs(pixels - np.array({rgb})).sum(axis=-1) < 90
labels, count = ndimage.label(mask)
sizes = np.bincount(labels.ravel())[1:]
print(int((sizes >= 6).sum()))"""


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: int       # centre
    y: int
    size: int    # radius of a circle, half the side of a square, half the base (and height) of a triangle

    @property
    def area(self) -> float:
        return {"circle": math.pi, "square": 4.0, "triangle": 2.0}[self.kind] * self.size**2

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x - self.size, self.y - self.size, self.x + self.size, self.y + self.size

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclasses.dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]

    def draw(self) -> Image.Image:
        image = Image.new("RGB", (self.width, self.height), self.background)
        draw = ImageDraw.Draw(image)
        for shape in self.shapes:
            fill = COLOURS[shape.colour]
            left, top, right, bottom = shape.box
            if shape.kind == "circle":
                draw.ellipse((left, top, right, bottom), fill=fill)
            elif shape.kind == "square":
                draw.rectangle((left, top, right, bottom), fill=fill)
            else:
                draw.polygon([(shape.x, top), (left, bottom), (right, bottom)], fill=fill)
        return image


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return not (a[2] + GAP < b[0] or b[2] + GAP < a[0] or a[3] + GAP < b[1] or b[3] + GAP < a[1])


def random_scene(rng: np.random.Generator, count: tuple[int, int] = (2, 6), size: tuple[int, int] = (12, 40),
                 side: tuple[int, int] = SIDE_RANGE) -> Scene:
    """count[0]..count[1] shapes of half-extent size[0]..size[1] px placed without touching each
    other or the border (a crowded image just gets fewer shapes, at least one)."""
    width, height = (int(s) for s in rng.integers(side[0], side[1] + 1, size=2))
    target = int(rng.integers(count[0], count[1] + 1))
    shapes: list[Shape] = []
    for _ in range(50 * target):  # rejection sampling
        if len(shapes) == target:
            break
        extent = int(rng.integers(size[0], size[1] + 1))
        shape = Shape(kind=str(rng.choice(KINDS)), colour=str(rng.choice(list(COLOURS))),
                      x=int(rng.integers(extent + GAP, width - extent - GAP)),
                      y=int(rng.integers(extent + GAP, height - extent - GAP)), size=extent)
        if not any(_overlaps(shape.box, other.box) for other in shapes):
            shapes.append(shape)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(width=width, height=height, background=background, shapes=tuple(shapes))


def _listing(scene: Scene) -> str:
    return ", ".join(f"a {shape.name}" for shape in scene.shapes)


def exists_task(rng: np.random.Generator, fail_first: bool) -> Task:
    scene = random_scene(rng)
    kind = str(rng.choice(KINDS))
    found = any(shape.kind == kind for shape in scene.shapes)
    answer = "yes" if found else "no"
    thought = f"The image shows {_listing(scene)}. {'One of them is' if found else 'None of them is'} a {kind}."
    return Task("exists", EASY, scene.draw(), f"Is there a {kind} in the image? Answer yes or no.", answer,
                direct_answer(thought, answer))


def count_few_task(rng: np.random.Generator, fail_first: bool) -> Task:
    """Worded like `count_many_task`: only the picture (a few large shapes) says it is easy."""
    scene = random_scene(rng, count=(1, 4), size=(30, 44), side=(224, 288))
    colour = scene.shapes[int(rng.integers(len(scene.shapes)))].colour
    count = sum(shape.colour == colour for shape in scene.shapes)
    thought = (f"I can see {NUMBERS[len(scene.shapes)]} large shapes: {_listing(scene)}. "
               f"{NUMBERS[count].capitalize()} of them {'is' if count == 1 else 'are'} {colour}.")
    return Task("count_few", EASY, scene.draw(), COUNT_COLOUR_QUESTION.format(colour=colour), str(count),
                direct_answer(thought, str(count)))


def count_task(rng: np.random.Generator, fail_first: bool) -> Task:
    scene = random_scene(rng)
    # Mostly ask about a colour and kind that is present, so answers are not mostly zero.
    target = scene.shapes[int(rng.integers(len(scene.shapes)))]
    colour, kind = target.colour, target.kind
    if rng.random() < 0.3:
        colour, kind = str(rng.choice(list(COLOURS))), str(rng.choice(KINDS))
    answer = str(sum(shape.colour == colour and shape.kind == kind for shape in scene.shapes))
    plan = (f"I will find the {colour} regions, tell circles, squares and triangles apart by how much "
            f"of their bounding box they fill, and count the {kind}s.")
    code = _COUNT_CODE.format(rgb=list(COLOURS[colour]), kind=kind)
    return Task("count", HARD, scene.draw(), f"How many {colour} {kind}s are there? Answer with a number.", answer,
                code_answer(plan, code, f"The code counted {answer} {colour} {kind}s.", answer, fail_first))


def _largest_is_clear(scene: Scene) -> bool:
    areas = sorted((shape.area for shape in scene.shapes), reverse=True)
    return len(areas) < 2 or areas[0] >= LARGEST_MARGIN * areas[1]


def largest_task(rng: np.random.Generator, fail_first: bool) -> Task:
    scene = random_scene(rng)
    while not _largest_is_clear(scene):
        scene = random_scene(rng)
    answer = max(scene.shapes, key=lambda shape: shape.area).colour
    plan = "I will measure the biggest connected region of each colour in pixels and pick the largest."
    code = _LARGEST_CODE.format(colours={name: list(rgb) for name, rgb in COLOURS.items()})
    return Task("largest", HARD, scene.draw(), "What colour is the largest shape? Answer with the colour name.",
                answer, code_answer(plan, code, f"The largest region is {answer}.", answer, fail_first))


def count_many_task(rng: np.random.Generator, fail_first: bool) -> Task:
    scene = random_scene(rng, count=(10, 18), size=(5, 8), side=(224, 288))
    colour = scene.shapes[int(rng.integers(len(scene.shapes)))].colour
    answer = str(sum(shape.colour == colour for shape in scene.shapes))
    plan = f"There are many small shapes; I will label the connected {colour} regions and count them."
    code = _COUNT_MANY_CODE.format(rgb=list(COLOURS[colour]))
    return Task("count_many", HARD, scene.draw(), COUNT_COLOUR_QUESTION.format(colour=colour),
                answer, code_answer(plan, code, f"The code found {answer} {colour} shapes.", answer, fail_first))
