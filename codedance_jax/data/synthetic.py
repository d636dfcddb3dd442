"""The embedded task suite: seeded picture questions where code helps on the hard items and is not
needed on the easy ones, so a tiny model can be trained and evaluated without downloads.

Each record is in the release's record form (``messages`` + PNG ``images``) with its
``ground_truth``, ``kind`` and ``difficulty`` (``easy``: answered directly; ``hard``: a code turn,
the tool turn the rollout engine would show for what that code prints, and the answer; some hard
records first write code with a syntax error, see it fail, and fix it). Within a family the easy
and the hard kind are asked in the same words (how many shapes of a colour, a bar's value, where
a mark is), so only the picture says which one an item is. Kinds: shapes
(`shapes.py`), bar charts (`charts.py`) and visual search (`search.py`). The code is real: run in
the sandbox on the image it receives (the record's image resized for the model, as a JPEG) it
prints the ground truth, which the tests check.

The same (seed, index) always gives the same record, whatever the number of records asked for.
Splits use disjoint seeds (``SPLIT_SEEDS``): SFT trains on one, RL prompts come from another and
the held-out eval from a third.
"""
from __future__ import annotations

import io

import numpy as np

from codedance_jax.data import charts, search, shapes
from codedance_jax.data.trajectories import EASY, HARD

TASKS = {
    EASY: (shapes.exists_task, shapes.count_few_task, charts.bar_labelled_task, search.search_large_task),
    HARD: (shapes.count_task, shapes.largest_task, shapes.count_many_task, charts.bar_value_task,
           search.search_small_task),
}
FAIL_FIRST_RATE = 0.25  # hard records whose first call has a syntax error that the next one fixes
SPLIT_SEEDS = {"sft": 0, "eval": 1, "rl": 2}


def synthetic_record(seed: int, index: int) -> dict:
    """Record ``index`` of the synthetic set ``seed``: id, messages, PNG images, ground_truth, kind,
    difficulty. Easy and hard items are equally likely."""
    rng = np.random.default_rng([seed, index])
    difficulty = EASY if rng.random() < 0.5 else HARD
    make = TASKS[difficulty][int(rng.integers(len(TASKS[difficulty])))]
    task = make(rng, fail_first=bool(rng.random() < FAIL_FIRST_RATE))
    png = io.BytesIO()
    task.image.save(png, format="PNG")
    return {"id": f"synthetic-{seed}-{index}",
            "messages": [{"role": "user", "content": f"<image>\n{task.question}"}] + task.replies,
            "images": [png.getvalue()], "ground_truth": task.answer, "kind": task.kind,
            "difficulty": task.difficulty}


def synthetic_records(num_records: int, seed: int = 0) -> list[dict]:
    """Records 0..num_records-1 of the synthetic set ``seed``."""
    return [synthetic_record(seed, index) for index in range(num_records)]
