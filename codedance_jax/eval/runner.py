"""Runs benchmark items through the rollout engine (the same engine, sandbox and tool turns as
RL) and writes each item's record the moment its trajectory ends."""
from __future__ import annotations

import functools
import zlib
from typing import Callable, Mapping, Sequence

from tqdm import tqdm

from codedance_jax.eval import records, scoring
from codedance_jax.eval.items import Item
from codedance_jax.processing.chat import IMAGE_PLACEHOLDER
from rollout.engine import Engine, Request


class _LazyImage(Sequence):
    """An item's one image, decoded only when the engine starts the request (so at most the
    busy slots' images are decoded at a time). A decode error becomes the trajectory's
    `bad_prompt` finish detail, naming the file, row and field."""

    def __init__(self, item: Item):
        self._item = item

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index):
        if index != 0:
            raise IndexError(index)
        return self._item.image.load()


def request_for(item: Item, system_prompt: str | None, seed: int = 0, forced_turns=None, sampling=None) -> Request:
    """The item as an engine request; its sampling seed depends on `seed` and the id only, so a
    resumed or sharded run samples each item as an uninterrupted one would."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    content = item.question if item.image is None else f"{IMAGE_PLACEHOLDER}\n{item.question}"
    messages.append({"role": "user", "content": content})
    return Request(messages=messages, images=() if item.image is None else _LazyImage(item), request_id=item.id,
                   seed=(seed + zlib.crc32(item.id.encode())) % 2**31, forced_turns=forced_turns, sampling=sampling)


class Runner:
    """runner.run(items, write) sends items through the engine `chunk_size` at a time (bounding the
    trajectories held in memory) and calls write(record) for each as it finishes."""

    def __init__(self, engine: Engine, tokenizer, benchmark, out_dir: str, system_prompt: str | None,
                 judge=None, image_side: int = 768, chunk_size: int = 256, seed: int = 0, sampling=None):
        """sampling: per-request SamplingParams (default: the engine's)."""
        self.engine, self.tokenizer, self.benchmark = engine, tokenizer, benchmark
        self.sampling = sampling
        self.out_dir, self.system_prompt, self.judge = out_dir, system_prompt, judge
        self.image_side, self.chunk_size, self.seed = image_side, chunk_size, seed

    def run(self, items: Sequence[Item], write: Callable[[dict], None],
            scripts: Mapping[str, list[str]] | None = None, progress: bool = True, params=None) -> None:
        """scripts: optional teacher-forced assistant turns per item id (a known trajectory
        replayed through the engine, its tool calls run for real); params: weights to sample
        with (GRPO validation passes the train state's), default the engine's."""
        scripts = scripts or {}
        with tqdm(total=len(items), desc=self.benchmark.name, disable=not progress, unit="item") as bar:
            for start in range(0, len(items), self.chunk_size):
                chunk = {item.id: item for item in items[start: start + self.chunk_size]}

                def finished(trajectory, chunk=chunk):
                    item = chunk[trajectory.request_id]
                    verdict_for = functools.partial(scoring.score, self.benchmark, item, judge=self.judge)
                    write(records.trajectory_record(item, trajectory, self.tokenizer, verdict_for, self.out_dir,
                                                    self.image_side))
                    bar.update(1)

                requests = [request_for(item, self.system_prompt, self.seed, scripts.get(item.id), self.sampling)
                            for item in chunk.values()]
                self.engine.generate(requests, params=params, on_finish=finished)
