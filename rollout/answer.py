"""Answers one question about one image with a converted checkpoint and prints the trajectory.

    python -m rollout.answer --ckpt_dir=CKPT --image=photo.jpg --question="How many birds?"

The model thinks, writes code that runs in the sandbox, reads the results (text and images) and
answers; every turn, each tool call's outcome and the finish reason are printed.
"""
from __future__ import annotations

import os
import re

from absl import app, flags
from PIL import Image

from codedance_jax.logging_setup import quiet_library_logs
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import checkpoint_tokenizer_dir, load_tokenizer
from models.qwen2_5_vl import Qwen2_5_VL
from rollout import flags as _engine_flags  # noqa: F401 - defines the shared engine flags
from rollout.engine import Engine, EngineConfig, Request
from rollout.sampling import SamplingParams
from sandbox import InterpreterPool

FLAGS = flags.FLAGS
flags.DEFINE_string("image", None, "Path of the image to ask about.")
flags.DEFINE_string("question", None, "The question.")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 disables it).")
flags.DEFINE_string("save_images_dir", None, "If set, every image of the trajectory is saved there as PNG.")

IMAGE_PAD_RUN = re.compile(r"(?:<\|image_pad\|>)+")


def _readable(text: str) -> str:
    """The trajectory text with each image's run of pads shown as one marker."""
    return IMAGE_PAD_RUN.sub(lambda m: f"<|image_pad|>x{m.group(0).count('<|image_pad|>')}", text)


def main(argv):
    del argv
    quiet_library_logs()
    model = Qwen2_5_VL.from_checkpoint(FLAGS.ckpt_dir, dtype=FLAGS.dtype)
    tokenizer = load_tokenizer(checkpoint_tokenizer_dir(FLAGS.ckpt_dir, FLAGS.tokenizer_dir))
    config = EngineConfig(num_slots=1, max_context=FLAGS.max_context, prefill_chunk=FLAGS.prefill_chunk,
                          decode_steps=FLAGS.decode_steps, max_turns=FLAGS.max_turns,
                          max_turn_tokens=FLAGS.max_turn_tokens, max_response_tokens=FLAGS.max_context,
                          max_tool_tokens=FLAGS.max_context,
                          sampling=SamplingParams(FLAGS.temperature, FLAGS.top_p, FLAGS.top_k),
                          image_config=ImageProcessingConfig.for_checkpoint(FLAGS.ckpt_dir))
    with Image.open(FLAGS.image) as image:
        request = Request.from_question(FLAGS.question, image.convert("RGB"), system_prompt=FLAGS.system_prompt or None,
                                        seed=FLAGS.seed)
    with InterpreterPool(num_workers=1, timeout_s=FLAGS.code_timeout_s) as pool:
        engine = Engine(model, tokenizer, pool, config)
        [trajectory] = engine.generate([request])

    print(_readable(trajectory.text(tokenizer)))
    print("=" * 80)
    for number, call in enumerate(trajectory.tool_calls, start=1):
        detail = f": {call.error}" if call.error else ""
        print(f"tool call {number}: {call.outcome}{detail} ({call.num_images} images, {call.duration_s:.2f} s)")
    print(f"finish reason: {trajectory.finish_reason}" + (f" ({trajectory.finish_detail})"
                                                          if trajectory.finish_detail else ""))
    print(f"tokens: {trajectory.prompt_length} prompt + {trajectory.response_length} response, "
          f"{sum(trajectory.loss_mask)} generated; {trajectory.num_turns} turns; "
          f"{engine.stats.wall_s:.1f} s; KV cache {engine.cache_nbytes / 2**20:.1f} MiB")
    if FLAGS.save_images_dir:
        os.makedirs(FLAGS.save_images_dir, exist_ok=True)
        for number, image in enumerate(trajectory.images):
            image.save(os.path.join(FLAGS.save_images_dir, f"image_{number}.png"))


if __name__ == "__main__":
    flags.mark_flags_as_required(["ckpt_dir", "image", "question"])
    app.run(main)
