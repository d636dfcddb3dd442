"""RL prompts in the release's form, and the resumable order a GRPO run takes them in.

A raw RL record has `data_source`, the conversation so far as `prompt` (the release) or
`messages` (system and user turns; `<image>` placeholders take `images` in order), `images`,
`reward_model.ground_truth` (or a top-level `ground_truth`) and `extra_info` (optional
`question`, `options` for multiple choice, `task` to override the data source's rules).

Records are validated lazily, when the iterator reaches them: a record without a ground truth, of
an unknown data source, with malformed messages or an image that does not decode is skipped,
counted under the reason and logged with its id and field; it never stops a run. A file where
every record is skipped is an error.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging
from PIL import Image

from codedance_jax.data.records import RecordError, decode_image, read_raw_records
from codedance_jax.processing.chat import IMAGE_PLACEHOLDER, ROLES
from codedance_jax.rewards import task_for_record


@dataclasses.dataclass(frozen=True)
class RLPrompt:
    id: str
    messages: list[dict]           # system/user turns, ready for render_chat
    images: list[Image.Image]
    ground_truth: Any
    task: str                      # "general" or "math": which reward rules apply
    options: Sequence[str] | None = None
    question: str = ""             # the question text (for a judge and reports)
    data_source: str = ""
    difficulty: str = ""           # "easy" / "hard" when the source tags it (the synthetic suite does)


class PromptError(ValueError):
    """A record that cannot be a prompt; `reason` is the skip counter it goes under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _question_of(messages: list[dict]) -> str:
    user = [m.get("content") for m in messages if m.get("role") == "user"]
    text = user[-1] if user and isinstance(user[-1], str) else ""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def decode_prompt(raw: Mapping[str, Any], default_task: str | None = None) -> RLPrompt:
    """An RLPrompt from a raw record; PromptError naming the record and field otherwise."""
    record_id = str(raw.get("id"))
    messages = raw.get("prompt") if raw.get("prompt") is not None else raw.get("messages")
    if isinstance(messages, np.ndarray):  # parquet lists of structs come back as arrays
        messages = list(messages)
    if not isinstance(messages, list) or not messages:
        raise PromptError("bad_messages", f"record {record_id}: 'prompt' / 'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise PromptError("bad_messages", f"record {record_id}: messages[{index}] must have a role in {ROLES}")
    # A prompt ends where the model starts: drop any reference answer the record carries.
    while messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    if not messages:
        raise PromptError("bad_messages", f"record {record_id}: no system or user turn before the answer")
    reward_model = raw.get("reward_model") if isinstance(raw.get("reward_model"), Mapping) else {}
    ground_truth = reward_model.get("ground_truth", raw.get("ground_truth"))
    if ground_truth is None or (isinstance(ground_truth, str) and not ground_truth.strip()):
        raise PromptError("no_ground_truth", f"record {record_id}: reward_model.ground_truth is missing or empty")
    extra = raw.get("extra_info") if isinstance(raw.get("extra_info"), Mapping) else {}
    try:
        task = task_for_record(raw.get("data_source"), extra, default=default_task, record_id=record_id)
    except ValueError as err:
        raise PromptError("unknown_data_source", str(err)) from err
    placeholders = sum(str(m.get("content")).count(IMAGE_PLACEHOLDER) for m in messages
                       if isinstance(m.get("content"), str))
    raw_images = list(raw.get("images") if raw.get("images") is not None else ())
    if placeholders != len(raw_images):
        raise PromptError("bad_images", f"record {record_id}: images: {placeholders} <image> placeholders "
                                        f"but {len(raw_images)} images")
    try:
        images = [decode_image(image, f"record {record_id}, images[{k}]") for k, image in enumerate(raw_images)]
    except RecordError as err:
        raise PromptError("bad_images", str(err)) from err
    options = extra.get("options")
    return RLPrompt(id=record_id, messages=[dict(m) for m in messages], images=images,
                    ground_truth=ground_truth, task=task,
                    options=None if options is None or len(options) == 0 else [str(o) for o in options],
                    question=str(extra.get("question") or _question_of(messages)),
                    data_source=str(raw.get("data_source") or ""), difficulty=str(extra.get("difficulty") or ""))


def prompt_source(path: str) -> list[dict]:
    """Raw records of an RL file (.jsonl or .parquet); images stay encoded until used."""
    return list(read_raw_records(path))


def synthetic_prompt_source(num_records: int, seed: int) -> list[dict]:
    """The embedded task suite as raw RL records: the question turn, its ground truth, and the
    item's difficulty and kind (so rollout metrics report tool use on easy and hard items)."""
    from codedance_jax.data.synthetic import synthetic_records

    return [{"id": r["id"], "data_source": "synthetic", "prompt": r["messages"][:1], "images": r["images"],
             "reward_model": {"ground_truth": r["ground_truth"]},
             "extra_info": {"difficulty": r["difficulty"], "kind": r["kind"]}}
            for r in synthetic_records(num_records, seed=seed)]


class PromptIterator:
    """Prompts in a seeded order, reshuffled each epoch; the position is a small JSON state, so a
    resumed run continues with exactly the prompts it would have taken."""

    def __init__(self, source: Sequence[Mapping[str, Any]], *, seed: int, default_task: str | None = None,
                 process_index: int = 0, process_count: int = 1):
        if not len(source):
            raise ValueError("the RL prompt source is empty")
        self.source, self.seed, self.default_task = source, seed, default_task
        self.process_index, self.process_count = process_index, process_count
        self.epoch, self.position = 0, 0
        self.skipped: Counter = Counter()
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
        return order[self.process_index::self.process_count]

    def next_prompts(self, count: int) -> list[RLPrompt]:
        prompts, misses = [], 0
        while len(prompts) < count:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            raw = self.source[int(self._order[self.position])]
            self.position += 1
            try:
                prompts.append(decode_prompt(raw, self.default_task))
                misses = 0
            except PromptError as err:
                self.skipped[err.reason] += 1
                logging.warning("skipping RL prompt: %s", err)
                misses += 1
                if misses > len(self._order):
                    raise ValueError(f"no usable prompt in the source: {dict(self.skipped)} skipped") from err
        return prompts

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "skipped": dict(self.skipped)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = Counter(state.get("skipped", {}))
        self._order = self._permutation(self.epoch)
