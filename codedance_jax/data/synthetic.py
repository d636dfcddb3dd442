"""A seeded synthetic task so a tiny model can be trained and evaluated without downloads.

Each record is a picture of coloured circles, squares and triangles on a plain background and
one question about it, in the release's record form (``messages`` + PNG ``images``) with its
``ground_truth``. Easy questions ("Is there a triangle?") are answered directly; hard ones
(counting one kind of shape of one colour, the colour of the largest shape) are answered with a
code turn, the tool turn the rollout engine would show for what that code prints (written by
``tool_message``, so SFT trains on the tokens rollout produces), and a final answer. The code is
real: run on the image the sandbox receives (``resize_for_model`` of the record's image, as
``input_image``) it prints the ground truth, which the tests check.

The same (seed, index) always gives the same record, whatever the number of records asked for.
"""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from codedance_jax.processing.tool_turns import TOOL_OK, ToolCall, tool_message

COLOURS = {"red": (220, 50, 47), "green": (46, 160, 67), "blue": (38, 110, 220), "yellow": (240, 200, 40)}
KINDS = ("circle", "square", "triangle")
BACKGROUNDS = ((255, 255, 255), (236, 236, 236), (250, 244, 228))
SIDE_RANGE = (128, 288)    # image width and height, px
SIZE_RANGE = (12, 40)      # shape half-extent, px
MAX_SHAPES = 6
GAP = 6                    # px between shape boxes, so shapes never touch
LARGEST_MARGIN = 1.3       # "largest shape" is asked only when it is this much larger than the next

# A pixel belongs to a colour when its summed absolute RGB difference is below this; shapes are
# told apart by how much of their bounding box they fill (square 1, circle ~0.79, triangle 0.5).
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


def random_scene(rng: np.random.Generator) -> Scene:
    """2 to MAX_SHAPES shapes placed without touching each other or the border."""
    width, height = (int(side) for side in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2))
    target = int(rng.integers(2, MAX_SHAPES + 1))
    shapes: list[Shape] = []
    for _ in range(50 * target):  # rejection sampling; a crowded image just gets fewer shapes
        if len(shapes) == target:
            break
        size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
        shape = Shape(kind=str(rng.choice(KINDS)), colour=str(rng.choice(list(COLOURS))),
                      x=int(rng.integers(size + GAP, width - size - GAP)),
                      y=int(rng.integers(size + GAP, height - size - GAP)), size=size)
        if not any(_overlaps(shape.box, other.box) for other in shapes):
            shapes.append(shape)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(width=width, height=height, background=background, shapes=tuple(shapes))


def _listing(scene: Scene) -> str:
    return ", ".join(f"a {shape.name}" for shape in scene.shapes)


def _direct_answer(thought: str, answer: str) -> list[dict]:
    return [{"role": "assistant", "content": f"<think>{thought}</think>\n<answer>{answer}</answer>"}]


def _code_answer(plan: str, code: str, conclusion: str, answer: str) -> list[dict]:
    """A code turn, the tool turn with what the code prints (the answer), and the final answer."""
    printed = ToolCall(code=code, outcome=TOOL_OK, stdout=answer + "\n")
    return [{"role": "assistant", "content": f"<think>{plan}</think>\n<code>\n```python\n{code}\n```\n</code>"},
            tool_message(printed),
            {"role": "assistant", "content": f"<think>{conclusion}</think>\n<answer>{answer}</answer>"}]


def _exists_task(scene: Scene, rng: np.random.Generator) -> tuple[str, str, list[dict]]:
    kind = str(rng.choice(KINDS))
    found = any(shape.kind == kind for shape in scene.shapes)
    answer = "yes" if found else "no"
    thought = f"The image shows {_listing(scene)}. {'One of them is' if found else 'None of them is'} a {kind}."
    return f"Is there a {kind} in the image? Answer yes or no.", answer, _direct_answer(thought, answer)


def _count_task(scene: Scene, rng: np.random.Generator) -> tuple[str, str, list[dict]]:
    # Mostly ask about a colour and kind that is present, so answers are not mostly zero.
    target = scene.shapes[int(rng.integers(len(scene.shapes)))]
    colour, kind = target.colour, target.kind
    if rng.random() < 0.3:
        colour, kind = str(rng.choice(list(COLOURS))), str(rng.choice(KINDS))
    answer = str(sum(shape.colour == colour and shape.kind == kind for shape in scene.shapes))
    plan = (f"I will find the {colour} regions, tell circles, squares and triangles apart by how much "
            f"of their bounding box they fill, and count the {kind}s.")
    code = _COUNT_CODE.format(rgb=list(COLOURS[colour]), kind=kind)
    return (f"How many {colour} {kind}s are there? Answer with a number.", answer,
            _code_answer(plan, code, f"The code counted {answer} {colour} {kind}s.", answer))


def _largest_task(scene: Scene) -> tuple[str, str, list[dict]]:
    answer = max(scene.shapes, key=lambda shape: shape.area).colour
    plan = "I will measure the biggest connected region of each colour in pixels and pick the largest."
    code = _LARGEST_CODE.format(colours={name: list(rgb) for name, rgb in COLOURS.items()})
    return ("What colour is the largest shape? Answer with the colour name.", answer,
            _code_answer(plan, code, f"The largest region is {answer}.", answer))


def _largest_is_clear(scene: Scene) -> bool:
    areas = sorted((shape.area for shape in scene.shapes), reverse=True)
    return len(areas) < 2 or areas[0] >= LARGEST_MARGIN * areas[1]


def synthetic_record(seed: int, index: int) -> dict:
    """Record ``index`` of the synthetic set ``seed``: id, messages, PNG images, ground_truth."""
    rng = np.random.default_rng([seed, index])
    scene = random_scene(rng)
    tasks = ["exists", "count"] + (["largest"] if _largest_is_clear(scene) else [])
    task = tasks[int(rng.integers(len(tasks)))]
    if task == "exists":
        question, answer, replies = _exists_task(scene, rng)
    elif task == "count":
        question, answer, replies = _count_task(scene, rng)
    else:
        question, answer, replies = _largest_task(scene)
    png = io.BytesIO()
    scene.draw().save(png, format="PNG")
    return {"id": f"synthetic-{seed}-{index}",
            "messages": [{"role": "user", "content": f"<image>\n{question}"}] + replies,
            "images": [png.getvalue()], "ground_truth": answer}


def synthetic_records(num_records: int, seed: int = 0) -> list[dict]:
    """Records 0..num_records-1 of the synthetic set ``seed``."""
    return [synthetic_record(seed, index) for index in range(num_records)]
