"""The rollout engine: B slots decoding together, code running in the sandbox while the other
slots keep decoding, tool turns (text and images) appended into the live KV cache, and finished
slots refilled from the request queue.

One host loop iteration: dispatch a decode call for the slots that are decoding (it runs on the
device asynchronously), meanwhile turn finished tool calls and waiting requests into segments
on the host, then read the decode outputs (stop checks, tool submission) and dispatch the
segment appends. The device only waits on tools when every busy slot is waiting on one.
With `turn_synchronous=True` the engine instead behaves like turn-synchronous rollouts: tools
start only once no slot is decoding and every slot waits for all of them (a baseline).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import itertools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from transformers import PreTrainedTokenizerBase

from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import ImageProcessingConfig, preprocess_images, resize_for_model
from codedance_jax.processing.rope_index import continuation_positions
from rollout import trajectory as traj_lib
from rollout.sampler import DecodeInputs, Segment, SlotCache
from rollout.sampling import SamplingParams
from rollout.stops import StopDetector
from rollout.tool_images import usable_images
from rollout.tool_turns import (DEFAULT_SYSTEM_PROMPT, ToolTurnFormat, has_final_answer, outcome_of,
                                parse_tool_call, render_tool_turn)
from rollout.trajectory import ToolCall, Trajectory

DEFAULT_STOP_STRINGS = ("</code>", "</tool_call>", "<|im_end|>", "<|endoftext|>")
INPUT_IMAGE_FILE = "input_image.jpg"
IM_END = "<|im_end|>"


def sandbox_files(image, image_config: ImageProcessingConfig) -> dict[str, bytes]:
    """The files a trajectory's sandbox session starts with: the input image as the model sees it
    (``resize_for_model``), as a JPEG."""
    jpeg = io.BytesIO()
    resize_for_model(image, image_config).save(jpeg, format="JPEG", quality=95)
    return {INPUT_IMAGE_FILE: jpeg.getvalue()}


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    num_slots: int = 8
    max_context: int = 8192        # tokens per slot: prompt + response; sizes the KV cache
    prefill_chunk: int = 256       # tokens per cache write when appending a prompt or tool turn
    decode_steps: int = 16         # most tokens per slot per host round trip
    max_turns: int = 6             # assistant turns; the last tool turn says to answer now
    max_turn_tokens: int = 2048    # generated tokens per assistant turn
    max_response_tokens: int = 10240  # generated + tool tokens after the prompt
    max_tool_tokens: int = 8192    # all tool turns of a trajectory together
    max_images: int = 16           # images per trajectory, the prompt's included
    stop_strings: tuple[str, ...] = DEFAULT_STOP_STRINGS
    sampling: SamplingParams = SamplingParams()
    tool_format: ToolTurnFormat = ToolTurnFormat()
    image_config: ImageProcessingConfig = ImageProcessingConfig()
    cache_dtype: str | None = None  # default: the model's compute dtype
    turn_synchronous: bool = False  # baseline scheduling: all slots wait for all tools

    def __post_init__(self):
        for name in ("num_slots", "max_context", "prefill_chunk", "decode_steps", "max_turns",
                     "max_turn_tokens", "max_response_tokens", "max_tool_tokens", "max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class Request:
    """A conversation to continue: `messages` as `render_chat` takes them (`<image>` placeholders
    take `images` in order). The first image is also the sandbox's `input_image`.

    forced_turns: teacher forcing. Each entry (text or token ids) is one whole assistant turn,
    emitted instead of sampled through the same decode path (log-probs are recorded, tool calls
    run); a scripted turn ends where its script does (stop strings are not checked inside it),
    and turns after the script are sampled.
    """
    messages: list[dict]
    images: Sequence = ()
    request_id: object = None
    seed: int = 0
    sampling: SamplingParams | None = None      # default: the engine's
    stop_strings: tuple[str, ...] | None = None  # default: the engine's
    forced_turns: Sequence[str | Sequence[int]] | None = None

    @classmethod
    def from_question(cls, question: str, image: Image.Image | None = None,
                      system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, **kwargs) -> "Request":
        messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
        content = question if image is None else "<image>\n" + question
        messages.append({"role": "user", "content": content})
        return cls(messages=messages, images=[] if image is None else [image], **kwargs)


@dataclasses.dataclass
class EngineStats:
    wall_s: float = 0.0
    tool_wait_s: float = 0.0   # device idle because every busy slot waited on a tool
    decode_calls: int = 0
    generated_tokens: int = 0
    tool_calls: int = 0

    @property
    def tool_wait_fraction(self) -> float:
        return self.tool_wait_s / self.wall_s if self.wall_s else 0.0


DECODING, WAITING_TOOL = "decoding", "waiting_tool"


@dataclasses.dataclass
class _Slot:
    """Host state of a busy slot."""
    index: int
    trajectory: Trajectory
    stop_strings: tuple[str, ...]
    sampling: SamplingParams
    key: np.ndarray            # uint32 [2]
    session_id: str
    sandbox_files: dict | None  # sent with the first tool call only
    script: collections.deque  # remaining forced turns (token lists)
    forced_turn: list[int] | None = None
    forced_done: int = 0
    pending: int = 0           # last token, not yet in the cache
    pending_position: int = 0
    cache_length: int = 0
    turn_tokens: list[int] = dataclasses.field(default_factory=list)
    tool_tokens: int = 0
    state: str = DECODING
    call: ToolCall | None = None           # tool call of the finished turn
    future: concurrent.futures.Future | None = None
    submitted: bool = False                # the slot's sandbox session exists

    @property
    def unsubmitted_call(self) -> bool:
        return self.state == WAITING_TOOL and self.call.code is not None and self.future is None

    @property
    def tool_result_ready(self) -> bool:
        """A call that could not be parsed needs no sandbox; others are ready when their future is."""
        if self.state != WAITING_TOOL:
            return False
        return self.future.done() if self.future is not None else self.call.code is None


class Engine:
    """Multi-turn rollouts with sandboxed code execution (see module docstring).

    engine = Engine(model, tokenizer, pool, EngineConfig(...))
    trajectories = engine.generate([Request.from_question("How many cats?", image), ...])
    """

    _instances = itertools.count()

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, pool=None, config: EngineConfig = EngineConfig(),
                 mesh: jax.sharding.Mesh | None = None):
        """mesh: shard the KV cache and the steps over it (slots over the data-parallel axes, KV
        heads over "tensor"); the parameters passed to `generate` must live on its devices."""
        self.model_config = model.config
        # An abstract model (ShapeDtypeStructs, e.g. for GRPO, which passes the train state's
        # parameters to each generate call) holds no weights; host arrays would be copied in on
        # every call, so concrete ones are put on the device once.
        params = model.params()
        abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
        self.params = None if abstract else jax.device_put(params)
        self.tokenizer = tokenizer
        self.pool = pool
        self.config = config
        self.cache = SlotCache(model.config, config.num_slots, config.max_context, config.prefill_chunk,
                               config.decode_steps, jnp.dtype(config.cache_dtype) if config.cache_dtype else None,
                               mesh=mesh)
        mc = model.config
        self.vision_ids = frozenset({mc.image_token_id, mc.video_token_id, mc.vision_start_token_id,
                                     mc.vision_end_token_id})
        # continuation_positions needs the model's own image/video ids (they differ between vocabularies)
        self._rope_token_ids = {"image_token_id": mc.image_token_id, "video_token_id": mc.video_token_id}
        self.stops = StopDetector(tokenizer, mc.text.vocab_size, sorted(self.vision_ids))
        self.im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
        self._closers = {True: self._encode("\n"), False: self._encode(IM_END + "\n")}
        self._triggers = np.zeros((config.num_slots, mc.text.vocab_size), bool)
        self._triggers_sharding = self.cache.sharding.rows if self.cache.sharding else None
        self._triggers_device = jax.device_put(self._triggers, self._triggers_sharding)
        self._triggers_changed = False
        self._name = f"rollout{next(self._instances)}"
        self._sessions = itertools.count()
        self.stats = EngineStats()
        self._on_finish = None

    @property
    def cache_nbytes(self) -> int:
        return self.cache.nbytes

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- the loop ---------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], params: dict | None = None,
                 on_finish: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """Runs every request to completion; trajectories come back in request order.
        params: weights to sample with (default: the model's at construction).
        on_finish: called with each trajectory as soon as it ends (e.g. to save it before the rest finish)."""
        params = self.params if params is None else params
        if params is None:
            raise ValueError("this engine was built from an abstract model: pass generate(..., params=...)")
        self._on_finish = on_finish
        queue = collections.deque(enumerate(requests))
        results: list[Trajectory | None] = [None] * len(requests)
        slots: list[_Slot | None] = [None] * self.config.num_slots
        self.stats = EngineStats()
        started = time.perf_counter()
        try:
            while True:
                for slot in self._decoding(slots):
                    reason = self._limit_reached(slot)
                    if reason is not None:
                        self._finish(slot, slots, reason)
                decoding = self._decoding(slots)
                outputs = self._dispatch_decode(params, decoding) if decoding else None
                # Host work while the device decodes; the turn-synchronous baseline waits for a barrier.
                if not self.config.turn_synchronous:
                    prepared = self._prepare_ready_slots(slots, queue, results)
                elif outputs is None:
                    self._run_tools_to_completion(slots)
                    prepared = self._prepare_ready_slots(slots, queue, results)
                else:
                    prepared = []
                if outputs is not None:
                    self._take_outputs(outputs.to_host(), decoding, slots)
                for slot, start, segment in prepared:
                    self.cache.append(params, slot.index, start, segment)
                if self._triggers_changed:
                    self._triggers_device = jax.device_put(self._triggers, self._triggers_sharding)
                    self._triggers_changed = False
                if outputs is None and not prepared:
                    waiting = [s.future for s in slots if s is not None and s.future is not None]
                    if not waiting and not queue and all(s is None for s in slots):
                        break
                    if waiting:  # every busy slot waits on a tool: the device idles
                        idle_from = time.perf_counter()
                        concurrent.futures.wait(waiting, return_when=concurrent.futures.FIRST_COMPLETED)
                        self.stats.tool_wait_s += time.perf_counter() - idle_from
        finally:
            for slot in slots:
                if slot is not None:
                    self._close_session(slot)
            self.stats.wall_s = time.perf_counter() - started
        return results

    @staticmethod
    def _decoding(slots) -> list[_Slot]:
        return [s for s in slots if s is not None and s.state == DECODING]

    def _dispatch_decode(self, params: dict, decoding: list[_Slot]):
        cfg = self.config
        inputs = DecodeInputs.idle(cfg.num_slots, cfg.decode_steps)
        for slot in decoding:
            b = slot.index
            inputs.tokens[b], inputs.positions[b], inputs.keys[b] = slot.pending, slot.pending_position, slot.key
            inputs.temperature[b] = slot.sampling.temperature
            inputs.top_p[b], inputs.top_k[b] = slot.sampling.top_p, slot.sampling.top_k
            budget = self._budget_left(slot)
            if slot.forced_turn is not None:
                forced = slot.forced_turn[slot.forced_done: slot.forced_done + cfg.decode_steps]
                inputs.forced[b, : len(forced)] = forced
                inputs.num_forced[b] = len(forced)
                budget = min(budget, len(slot.forced_turn) - slot.forced_done)
            inputs.budget[b] = budget
        self.stats.decode_calls += 1
        filled = max(slot.cache_length for slot in decoding)
        return self.cache.decode(params, self._triggers_device, inputs, filled)

    def _budget_left(self, slot: _Slot) -> int:
        trajectory = slot.trajectory
        return min(self.config.max_turn_tokens - len(slot.turn_tokens),
                   self.config.max_response_tokens - trajectory.response_length,
                   self.config.max_context - len(trajectory.tokens))

    def _limit_reached(self, slot: _Slot) -> str | None:
        trajectory = slot.trajectory
        if len(trajectory.tokens) >= self.config.max_context:
            return traj_lib.FINISH_CONTEXT_FULL
        if trajectory.response_length >= self.config.max_response_tokens:
            return traj_lib.FINISH_RESPONSE_TOKENS
        if len(slot.turn_tokens) >= self.config.max_turn_tokens:
            return traj_lib.FINISH_TURN_TOKENS
        return None

    # -- decode outputs -----------------------------------------------------------------------

    def _take_outputs(self, outputs, decoding: list[_Slot], slots) -> None:
        for slot in decoding:
            b = slot.index
            count = int(outputs.counts[b])
            if count == 0:
                continue
            slot.key = outputs.keys[b]
            new = outputs.tokens[b, :count].tolist()
            self.stats.generated_tokens += count
            if new[-1] in self.vision_ids:  # only the last can be: vision tokens end the loop
                slot.trajectory.add(new[:-1], True, outputs.log_probs[b, : count - 1])
                self._finish(slot, slots, traj_lib.FINISH_VISION_TOKEN,
                             f"token {new[-1]} is a vision token; it was dropped")
                continue
            slot.trajectory.add(new, True, outputs.log_probs[b, :count])
            slot.turn_tokens += new
            slot.pending, slot.pending_position = new[-1], slot.pending_position + count
            slot.cache_length += count
            if slot.forced_turn is not None:
                slot.forced_done += count
                if slot.forced_done == len(slot.forced_turn):
                    self._end_turn(slot, slots)
            elif self._triggers[b, new[-1]] and self.stops.stop_at_end(slot.turn_tokens, slot.stop_strings):
                self._end_turn(slot, slots)

    def _end_turn(self, slot: _Slot, slots) -> None:
        """The assistant turn is over: finish, or start its tool call."""
        trajectory = slot.trajectory
        text = self.tokenizer.decode(slot.turn_tokens, skip_special_tokens=False)
        parsed = None if has_final_answer(text) else parse_tool_call(text)
        if parsed is None:
            return self._finish(slot, slots, traj_lib.FINISH_STOP)
        if trajectory.num_turns >= self.config.max_turns:
            return self._finish(slot, slots, traj_lib.FINISH_MAX_TURNS)
        if self.pool is None:
            return self._finish(slot, slots, traj_lib.FINISH_NO_SANDBOX)
        slot.state = WAITING_TOOL
        if parsed.error is not None:
            slot.call = ToolCall(code=None, outcome=traj_lib.TOOL_PARSE_ERROR, error=parsed.error)
            return None
        slot.call = ToolCall(code=parsed.code, outcome=traj_lib.TOOL_OK)
        if not self.config.turn_synchronous:
            self._submit(slot)
        return None

    def _submit(self, slot: _Slot) -> None:
        self.stats.tool_calls += 1
        try:
            slot.future = self.pool.submit(slot.session_id, slot.call.code, files=slot.sandbox_files)
        except (RuntimeError, ValueError, TypeError) as err:  # pool closed, code too long
            slot.future = concurrent.futures.Future()
            slot.future.set_exception(err)
        slot.sandbox_files = None
        slot.submitted = True

    def _run_tools_to_completion(self, slots) -> None:
        """Turn-synchronous baseline: start every pending call, then wait for all of them."""
        for slot in slots:
            if slot is not None and slot.unsubmitted_call:
                self._submit(slot)
        futures = [s.future for s in slots if s is not None and s.future is not None]
        if futures:
            idle_from = time.perf_counter()
            concurrent.futures.wait(futures)
            self.stats.tool_wait_s += time.perf_counter() - idle_from

    # -- host preparation of appends ------------------------------------------------------

    def _prepare_ready_slots(self, slots, queue, results) -> list[tuple[_Slot, int, Segment]]:
        """Segments for finished tool calls and for new requests in free slots."""
        prepared = []
        for slot in [s for s in slots if s is not None and s.tool_result_ready]:
            work = self._tool_turn_segment(slot, slots)
            if work is not None:
                prepared.append(work)
        for index in range(self.config.num_slots):
            while slots[index] is None and queue:
                work = self._start_request(index, *queue.popleft(), slots, results)
                if work is not None:
                    prepared.append(work)
        return prepared

    def _start_request(self, index: int, position: int, request: Request, slots, results):
        trajectory = Trajectory(request_id=position if request.request_id is None else request.request_id)
        results[position] = trajectory
        cfg = self.config
        try:
            rendered = render_chat(request.messages, self.tokenizer, list(request.images),
                                   image_config=cfg.image_config, add_generation_prompt=True)
            pixels, grids = preprocess_images(rendered.images, cfg.image_config)
            script = collections.deque(self._script_tokens(request.forced_turns or ()))
            files = sandbox_files(rendered.images[0], cfg.image_config) if rendered.images else None
        except (ValueError, TypeError, OSError) as err:
            return self._end(trajectory, traj_lib.FINISH_BAD_PROMPT, str(err))
        ids = rendered.input_ids.tolist()
        trajectory.add(ids, False)
        trajectory.prompt_length = len(ids)
        trajectory.add_images(rendered.images, grids)
        if len(ids) >= cfg.max_context:
            return self._end(trajectory, traj_lib.FINISH_PROMPT_TOO_LONG,
                             f"{len(ids)} prompt tokens; the context holds {cfg.max_context}")
        if len(rendered.images) > cfg.max_images:
            return self._end(trajectory, traj_lib.FINISH_BAD_PROMPT,
                             f"{len(rendered.images)} images; at most {cfg.max_images} are allowed")
        stops = tuple(cfg.stop_strings if request.stop_strings is None else request.stop_strings)
        slot = _Slot(index=index, trajectory=trajectory, stop_strings=stops,
                     sampling=request.sampling or cfg.sampling,
                     key=np.asarray(jax.random.key_data(jax.random.key(request.seed)), np.uint32),
                     session_id=f"{self._name}-{next(self._sessions)}", sandbox_files=files, script=script)
        self._triggers[index] = self.stops.trigger_mask(stops)
        self._triggers_changed = True
        slots[index] = slot
        positions, _ = continuation_positions(ids, grids, start=0, **self._rope_token_ids)
        return slot, 0, self._continue_with(slot, ids, positions, pixels, grids)

    def _script_tokens(self, turns) -> list[list[int]]:
        vocab = self.model_config.text.vocab_size
        script = []
        for number, turn in enumerate(turns):
            tokens = self._encode(turn) if isinstance(turn, str) else [int(t) for t in turn]
            if not tokens or not all(0 <= t < vocab for t in tokens):
                raise ValueError(f"forced turn {number} must be non-empty with ids below {vocab}")
            script.append(tokens)
        return script

    def _continue_with(self, slot: _Slot, ids: list[int], positions: np.ndarray, pixels, grids) -> Segment:
        """Segment writing all of `ids` but the last token into the slot's cache; the last token
        becomes pending and the slot decodes from it with the next forced turn, if any."""
        segment = Segment(np.asarray(ids[:-1], np.int32), positions[:, :-1], pixels, grids)
        slot.pending, slot.pending_position = ids[-1], int(positions[0, -1])
        slot.cache_length += len(ids) - 1
        slot.turn_tokens = []
        slot.trajectory.num_turns += 1
        slot.forced_turn = slot.script.popleft() if slot.script else None
        slot.forced_done = 0
        slot.state = DECODING
        return segment

    def _tool_turn_segment(self, slot: _Slot, slots):
        """Records the finished call and builds its tool turn; finishes the slot when it does not fit."""
        call, cfg, trajectory = slot.call, self.config, slot.trajectory
        pngs = []
        if slot.future is not None:
            try:
                result = slot.future.result()
                call.outcome = outcome_of(result.error, result.timed_out)
                call.error, call.stdout, call.stderr = result.error, result.stdout, result.stderr
                call.duration_s, pngs = result.duration_s, result.images
            except Exception as err:  # noqa: BLE001 - a broken sandbox call becomes an error turn
                call.outcome, call.error = traj_lib.TOOL_ERROR, f"SandboxError: {err}"
        slot.future, slot.call = None, None
        images, call.notes = usable_images(pngs, cfg.max_images - len(trajectory.images), cfg.image_config)
        call.num_images = len(images)
        trajectory.tool_calls.append(call)
        try:  # whatever a snippet printed ends only its own trajectory, never the batch
            rendered = render_tool_turn(call, images, self.tokenizer, cfg.tool_format, cfg.image_config,
                                        last_turn=trajectory.num_turns == cfg.max_turns - 1)
            pixels, grids = preprocess_images(rendered.images, cfg.image_config)
        except (ValueError, TypeError) as err:
            return self._finish(slot, slots, traj_lib.FINISH_TOOL_UNRENDERABLE, f"{type(err).__name__}: {err}")
        new_ids = self._closers[slot.pending == self.im_end_id] + rendered.input_ids.tolist()
        # Leave room for at least one generated token after the tool turn.
        room = min(cfg.max_tool_tokens - slot.tool_tokens, cfg.max_response_tokens - trajectory.response_length - 1,
                   cfg.max_context - len(trajectory.tokens) - 1)
        if len(new_ids) > room:
            return self._finish(slot, slots, traj_lib.FINISH_TOOL_BUDGET,
                                f"the tool turn needs {len(new_ids)} tokens; {max(room, 0)} are left")
        slot.tool_tokens += len(new_ids)
        trajectory.add(new_ids, False)
        trajectory.add_images(rendered.images, grids)
        segment_ids = [slot.pending] + new_ids
        positions, _ = continuation_positions(segment_ids, grids, start=slot.pending_position, **self._rope_token_ids)
        start = slot.cache_length
        return slot, start, self._continue_with(slot, segment_ids, positions, pixels, grids)

    def _finish(self, slot: _Slot, slots, reason: str, detail: str = "") -> None:
        self._close_session(slot)
        slots[slot.index] = None
        self._end(slot.trajectory, reason, detail)

    def _end(self, trajectory: Trajectory, reason: str, detail: str = "") -> None:
        trajectory.finish(reason, detail)
        if self._on_finish is not None:
            self._on_finish(trajectory)

    def _close_session(self, slot: _Slot) -> None:
        if slot.submitted:
            self.pool.close_session(slot.session_id)
