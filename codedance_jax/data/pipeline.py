"""The SFT input pipeline: raw records -> rendered chats -> length-bucketed batches, with grain.

Order of work, per process:
  1. ``grain.MapDataset`` over a random-access source of raw records (an in-memory list from
     ``records.read_raw_records``, or ``tfds_builder.open_data_source``), sharded by process
     (record i goes to process i % process_count), shuffled with a seed (a new order each epoch)
     and repeated.
  2. Each record is decoded and rendered (``render_chat``) in reader threads. A record that cannot
     be used becomes a skip marker rather than an error: it is counted by reason (``SKIP_REASONS``)
     and logged. Nothing is truncated: a record longer than the largest length bucket, or with more
     image patches than the largest patch bucket, is skipped.
  3. Examples are taken a window (``window_batches * batch_size`` examples) at a time, sorted by
     length and cut into batches, so a batch holds sequences of similar length and pads less; a
     batch also closes early when its image patches would overflow the largest patch bucket (it is
     then padded with empty rows). The window's batches come out in a seeded random order, and
     are collated (images preprocessed, M-RoPE positions) one at a time, in a background thread.

Iterator state (JSON-serialisable, so orbax's JsonSave can store it):
  ``{"parent": <grain state of the record stream where the window in progress starts>,
     "window": <index of that window>, "emitted": <its batches already returned>,
     "skipped": {reason: count}}``.
Restoring re-reads that one window (rendering, not collation) and drops the batches already
returned, so a resumed run yields exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Mapping, Sequence

import grain
import numpy as np
from transformers import PreTrainedTokenizerBase

from codedance_jax.data.records import RecordError, decode_record
from codedance_jax.processing.batching import ENDOFTEXT_ID, Batch, collate
from codedance_jax.processing.chat import RenderedChat, render_chat
from codedance_jax.processing.image import ImageProcessingConfig

SKIP_REASONS = (
    "invalid_record",    # RecordError: malformed messages, no assistant turn, missing/corrupt image
    "render_error",      # render_chat refused it (e.g. an image too small or too elongated)
    "too_long",          # more tokens than the largest length bucket
    "too_many_patches",  # more image patch rows than the largest patch bucket
)

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class SFTBatch:
    inputs: Batch
    record_ids: tuple[str, ...]  # ids of the real rows, in row order; padding rows come after them


@dataclasses.dataclass(frozen=True)
class _Example:
    record_id: str
    chat: RenderedChat
    num_patches: int


@dataclasses.dataclass(frozen=True)
class _Skipped:
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class _Render:
    """Raw record -> _Example, or _Skipped saying why it cannot be trained on."""
    tokenizer: PreTrainedTokenizerBase
    image_config: ImageProcessingConfig
    system_prompt: str | None
    max_length: int
    max_patches: int | None
    source_length: int

    def __call__(self, index: int, raw: Mapping[str, Any]) -> _Example | _Skipped:
        # Indices past the source's length come from later epochs; the source wraps them.
        record_id = str(raw.get("id") or f"record {index % self.source_length}")
        try:
            record = decode_record(raw, record_id)
        except RecordError as err:
            return _Skipped("invalid_record", str(err))
        try:
            chat = render_chat(record.messages, self.tokenizer, record.images, image_config=self.image_config,
                               system_prompt=self.system_prompt)
        except ValueError as err:
            return _Skipped("render_error", f"record {record_id}: {err}")
        if len(chat.input_ids) > self.max_length:
            return _Skipped("too_long", f"record {record_id}: {len(chat.input_ids)} tokens, more than the "
                                        f"largest length bucket {self.max_length}")
        num_patches = int(np.prod(chat.image_grid_thw, axis=1).sum())
        if self.max_patches is not None and num_patches > self.max_patches:
            return _Skipped("too_many_patches", f"record {record_id}: {num_patches} image patches, more than "
                                                f"the largest patch bucket {self.max_patches}")
        return _Example(record_id, chat, num_patches)


def _plan_batches(examples: list[_Example], batch_size: int, max_patches: int | None,
                  rng: np.random.Generator) -> list[list[_Example]]:
    """Cuts the examples, sorted by length, into batches of at most ``batch_size`` rows and
    ``max_patches`` patches; returns them in a random order."""
    groups: list[list[_Example]] = [[]]
    patches = 0
    for example in sorted(examples, key=lambda e: len(e.chat.input_ids)):
        full = len(groups[-1]) == batch_size
        overflows = max_patches is not None and patches + example.num_patches > max_patches
        if groups[-1] and (full or overflows):
            groups.append([])
            patches = 0
        groups[-1].append(example)
        patches += example.num_patches
    return [groups[i] for i in rng.permutation(len(groups))]


@dataclasses.dataclass(frozen=True)
class _BatchOptions:
    batch_size: int
    window_batches: int
    length_buckets: tuple[int, ...]
    patch_buckets: tuple[int, ...] | None
    image_config: ImageProcessingConfig
    pad_id: int
    seed: int

    @property
    def max_length(self) -> int:
        return max(self.length_buckets)

    @property
    def max_patches(self) -> int | None:
        return None if self.patch_buckets is None else max(self.patch_buckets)


class _WindowBatchIterator(grain.DatasetIterator):
    """Counts and drops skip markers, groups examples by length within a window, collates."""

    def __init__(self, parent: grain.DatasetIterator, options: _BatchOptions):
        super().__init__(parent)
        self._options = options
        self._skipped = dict.fromkeys(SKIP_REASONS, 0)
        self._window = 0           # index of the window in progress (or the next one to fill)
        self._window_start: Any = None
        self._emitted = 0
        self._pending: list[list[_Example]] = []

    def _fill_window(self) -> None:
        self._window_start = copy.deepcopy(self._parent.get_state())
        self._emitted = 0
        wanted = self._options.window_batches * self._options.batch_size
        examples: list[_Example] = []
        while len(examples) < wanted:
            try:
                element = next(self._parent)
            except StopIteration:
                break
            if isinstance(element, _Skipped):
                self._skipped[element.reason] += 1
                _log.warning("skipping a record (%s): %s", element.reason, element.message)
            else:
                examples.append(element)
        if not examples:
            raise StopIteration
        rng = np.random.default_rng([self._options.seed, self._window])
        self._pending = _plan_batches(examples, self._options.batch_size, self._options.max_patches, rng)

    def __next__(self) -> SFTBatch:
        if not self._pending:
            self._fill_window()
        group = self._pending.pop(0)
        self._emitted += 1
        if not self._pending:
            self._window += 1
        options = self._options
        inputs = collate([example.chat for example in group], length_buckets=options.length_buckets,
                         patch_buckets=options.patch_buckets, batch_size=options.batch_size,
                         pad_id=options.pad_id, image_config=options.image_config)
        return SFTBatch(inputs=inputs, record_ids=tuple(example.record_id for example in group))

    def get_state(self) -> dict:
        if self._pending:
            parent, emitted = self._window_start, self._emitted
        else:  # between windows: the next one starts where the record stream is now
            parent, emitted = self._parent.get_state(), 0
        return {"parent": copy.deepcopy(parent), "window": self._window, "emitted": emitted,
                "skipped": dict(self._skipped)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(copy.deepcopy(state["parent"]))
        self._window = state["window"]
        self._pending = []
        if state["emitted"]:
            self._fill_window()  # re-reads the window in progress; its skips are already counted
            del self._pending[:state["emitted"]]
            self._emitted = state["emitted"]
        self._skipped = dict(state["skipped"])


class SFTIterator:
    """Iterator of ``SFTBatch`` whose position can be saved and restored exactly; batches are
    collated ahead in a background thread when ``prefetch_batches`` > 0."""

    def __init__(self, batches: _WindowBatchIterator, prefetch_batches: int):
        self._batches = batches
        self._iterator: grain.DatasetIterator = batches
        if prefetch_batches:
            self._iterator = grain.experimental.ThreadPrefetchDatasetIterator(batches, prefetch_batches)
        self._exhausted = False

    def __iter__(self) -> "SFTIterator":
        return self

    def __next__(self) -> SFTBatch:
        try:
            return next(self._iterator)
        except StopIteration:
            self._exhausted = True
            raise

    def get_state(self) -> dict:
        """JSON-serialisable state as of the last batch returned (see the module docstring)."""
        return copy.deepcopy(self._iterator.get_state())

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(copy.deepcopy(state))
        self._exhausted = False

    @property
    def skipped(self) -> dict[str, int]:
        """Records skipped so far, by reason (all of ``SKIP_REASONS``), for metrics."""
        # The prefetch thread runs ahead, so the counts come from the state of the last batch
        # returned; once the data is exhausted the thread has stopped, and the final counts
        # (including skips after the last batch) are read from the batcher itself.
        counted = self._batches if self._exhausted else self._iterator
        return dict(counted.get_state()["skipped"])

    def close(self) -> None:
        """Stops the background threads."""
        self._iterator.close()


def make_sft_iterator(source: Sequence[Mapping[str, Any]], *, tokenizer: PreTrainedTokenizerBase,
                      batch_size: int, length_buckets: Sequence[int], seed: int,
                      image_config: ImageProcessingConfig = ImageProcessingConfig(),
                      patch_buckets: Sequence[int] | None = None, process_index: int = 0,
                      process_count: int = 1, num_epochs: int | None = None, window_batches: int = 8,
                      system_prompt: str | None = None, pad_id: int = ENDOFTEXT_ID,
                      num_threads: int = 8, prefetch_batches: int = 2) -> SFTIterator:
    """Batches of this process's share of ``source`` for SFT.

    Args:
      source: random-access raw records (``len`` and ``[i]``), in the release form.
      tokenizer: the model's tokenizer.
      batch_size: rows per batch on this process (short batches are padded with empty rows).
      length_buckets: allowed padded lengths; each batch uses the smallest that fits it.
      seed: shuffling seed; the same seed gives the same batches.
      image_config: image preprocessing options.
      patch_buckets: allowed pixel_values row counts; None keeps each batch's exact count.
      process_index, process_count: this process's shard (``jax.process_index()``,
        ``jax.process_count()``).
      num_epochs: passes over the data; None repeats forever.
      window_batches: batches' worth of examples grouped by length at a time; 1 disables grouping.
      system_prompt: a system turn added to records that have none.
      pad_id: token id of padding.
      num_threads: threads decoding and rendering records.
      prefetch_batches: batches collated ahead in a background thread; 0 collates on demand.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if len(source) < process_count:
        raise ValueError(f"the source has {len(source)} records, fewer than the {process_count} processes")
    if batch_size <= 0 or window_batches <= 0:
        raise ValueError(f"batch_size ({batch_size}) and window_batches ({window_batches}) must be positive")
    options = _BatchOptions(batch_size=batch_size, window_batches=window_batches,
                            length_buckets=tuple(length_buckets),
                            patch_buckets=None if patch_buckets is None else tuple(patch_buckets),
                            image_config=image_config, pad_id=pad_id, seed=seed)
    render = _Render(tokenizer=tokenizer, image_config=image_config, system_prompt=system_prompt,
                     max_length=options.max_length, max_patches=options.max_patches, source_length=len(source))
    records = (grain.MapDataset.source(source)
               .map_with_index(render)
               .slice(slice(process_index, None, process_count))
               .shuffle(seed=seed)
               .repeat(num_epochs))
    # Reader threads stay at most one window ahead, which bounds the decoded images held in memory.
    examples = records.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=window_batches * batch_size))
    return SFTIterator(_WindowBatchIterator(iter(examples), options), prefetch_batches)
