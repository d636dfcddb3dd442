"""Evaluates a converted checkpoint on benchmarks through the rollout engine.

    python -m codedance_jax.eval.main --ckpt_dir=CKPT --benchmark=NAME[,NAME] --data=PATH[,PATH] --out_dir=DIR

Per benchmark (in DIR, or DIR/NAME when several are given): predictions.jsonl (one record per
item, appended as each finishes; a re-run skips the ids already there), summary.json (also
printed) and report.html. With several processes (a multi-host pod: --distributed, or
--process_index/--process_count given explicitly) each runs every N-th item into its own shard
file and process 0 merges them and writes the summary and report.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags, logging

from codedance_jax.eval import predictions, registry, report, summary
from codedance_jax.eval.items import DataError
from codedance_jax.eval.runner import Runner
from codedance_jax.logging_setup import quiet_library_logs
from rollout import flags as _engine_flags  # noqa: F401 - defines the shared engine flags

FLAGS = flags.FLAGS
flags.DEFINE_list("benchmark", None, f"Benchmarks, NAME[:key=value]...; one of {', '.join(registry.names())}.")
flags.DEFINE_list("data", [], "Data path per benchmark, in the same order (empty for synthetic).")
flags.DEFINE_string("out_dir", None, "Output folder.")
flags.DEFINE_integer("limit", None, "Evaluate only the first N items of each benchmark (a quick look).")
flags.DEFINE_integer("max_tool_tokens", 8192, "Most tokens of all tool turns of one item together.")
flags.DEFINE_integer("num_slots", 8, "Items decoded together.")
flags.DEFINE_integer("max_pixels", None, "Image size cap in pixels; default: the checkpoint's preprocessor "
                     "config, else 1003520.")
flags.DEFINE_integer("chunk_size", 256, "Items handed to the engine at once (bounds trajectories held in memory).")
flags.DEFINE_integer("sandbox_workers", 8, "Interpreter pool workers.")
flags.DEFINE_integer("report_image_side", 768, "Longest side of the images saved for the report, in pixels.")
flags.DEFINE_string("judge_url", None, "OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) that judges "
                    "free-form answers the rules call wrong; off by default.")
flags.DEFINE_string("judge_model", "judge", "Judge model name on that server.")
flags.DEFINE_bool("judge_fallback_to_rules", False, "When the judge fails, keep the rules' verdict instead of stopping.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detected on TPU pods) and split "
                  "items by jax.process_index() / jax.process_count().")
flags.DEFINE_integer("process_index", None, "This process's index (default: jax.process_index()).")
flags.DEFINE_integer("process_count", None, "Number of processes (default: jax.process_count()).")
flags.DEFINE_float("merge_timeout_s", 6 * 3600, "How long process 0 waits for the other processes' shards.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


def make_judge(index: int):
    if not FLAGS.judge_url:
        return None
    from codedance_jax.rewards.judge import Judge, JudgeConfig
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    return Judge(JudgeConfig(base_url=FLAGS.judge_url, model=FLAGS.judge_model,
                             fallback_to_rules=FLAGS.judge_fallback_to_rules,
                             cache_path=os.path.join(FLAGS.out_dir, f"judge_cache.{index}.json")))


class _Model:
    """The engine and its pool, built on first use (a finished run needs no model)."""

    def __init__(self):
        self.engine = self.tokenizer = self._pool = None

    def get(self):
        if self.engine is None:
            self._build()
        return self.engine, self.tokenizer

    def _build(self):
        from codedance_jax.processing.image import ImageProcessingConfig
        from codedance_jax.processing.tokenizer import checkpoint_tokenizer_dir, load_tokenizer
        from models.qwen2_5_vl import Qwen2_5_VL
        from rollout.engine import Engine, EngineConfig
        from rollout.sampling import SamplingParams
        from sandbox import InterpreterPool

        ckpt = FLAGS.ckpt_dir
        if not ckpt:
            raise DataError("--ckpt_dir is required to run items (it is not needed when every item is done)")
        image_config = ImageProcessingConfig.for_checkpoint(ckpt)
        if FLAGS.max_pixels:
            image_config = dataclasses.replace(image_config, max_pixels=FLAGS.max_pixels)
        model = Qwen2_5_VL.from_checkpoint(ckpt, dtype=FLAGS.dtype)
        self.tokenizer = load_tokenizer(checkpoint_tokenizer_dir(ckpt, FLAGS.tokenizer_dir))
        self._pool = InterpreterPool(num_workers=FLAGS.sandbox_workers, timeout_s=FLAGS.code_timeout_s)
        config = EngineConfig(
            num_slots=FLAGS.num_slots, max_context=FLAGS.max_context, prefill_chunk=FLAGS.prefill_chunk,
            decode_steps=FLAGS.decode_steps, max_turns=FLAGS.max_turns, max_turn_tokens=FLAGS.max_turn_tokens,
            max_response_tokens=FLAGS.max_context, max_tool_tokens=FLAGS.max_tool_tokens,
            sampling=SamplingParams(FLAGS.temperature, FLAGS.top_p), image_config=image_config)
        self.engine = Engine(model, self.tokenizer, self._pool, config)

    def close(self):
        if self._pool is not None:
            self._pool.close()


def process_split() -> tuple[int, int]:
    import jax
    if FLAGS.distributed:
        jax.distributed.initialize()
    index = jax.process_index() if FLAGS.process_index is None else FLAGS.process_index
    count = jax.process_count() if FLAGS.process_count is None else FLAGS.process_count
    if not 0 <= index < count:
        raise DataError(f"--process_index={index} must be in [0, {count})")
    return index, count


def evaluate(spec: str, data: str | None, out_dir: str, model: _Model, judge, index: int, count: int) -> dict | None:
    benchmark = registry.get(spec)
    dataset = benchmark.read(data or None)
    items = dataset.items[: FLAGS.limit] if FLAGS.limit is not None else dataset.items
    os.makedirs(out_dir, exist_ok=True)
    marker = predictions.done_marker(out_dir, index, count)
    if os.path.exists(marker):  # left by an earlier run that process 0 never merged
        os.remove(marker)
    done = predictions.finished_ids(out_dir)
    todo = [item for item in items[index::count] if item.id not in done]
    logging.info("%s: %d items, %d for this process, %d already done, %d skipped rows", benchmark.name,
                 len(items), len(items[index::count]), len(items[index::count]) - len(todo), len(dataset.skipped))
    if todo:
        engine, tokenizer = model.get()
        runner = Runner(engine, tokenizer, benchmark, out_dir, FLAGS.system_prompt or None, judge,
                        FLAGS.report_image_side, FLAGS.chunk_size, FLAGS.seed)
        with predictions.PredictionWriter(predictions.shard_path(out_dir, index, count)) as writer:
            runner.run(todo, writer.write, progress=FLAGS.progress)
    if count > 1:
        open(marker, "w").close()
        if index != 0:
            return None
        predictions.wait_for_shards(out_dir, count, [item.id for item in items], FLAGS.merge_timeout_s)
        records = predictions.merge(out_dir, [item.id for item in dataset.items])
    else:
        records = predictions.read_predictions(predictions.shard_path(out_dir, 0, 1))
    selected = {item.id for item in items}
    records = predictions.in_order([r for r in records if r["id"] in selected], [item.id for item in items])
    result = summary.summarize(benchmark, dataset, records, [item.id for item in items])
    summary.write(result, os.path.join(out_dir, "summary.json"))
    report.write(os.path.join(out_dir, "report.html"), result, records)
    print(f"\n== {benchmark.name} ({out_dir}) ==\n{summary.table(result)}", flush=True)
    return result


def main(argv):
    del argv
    quiet_library_logs()
    specs, data = FLAGS.benchmark, list(FLAGS.data)
    if len(data) > len(specs):
        raise app.UsageError(f"{len(data)} --data paths for {len(specs)} benchmarks")
    data += [""] * (len(specs) - len(data))
    model = _Model()
    try:
        index, count = process_split()
        judge = make_judge(index)
        for spec, path in zip(specs, data):
            out_dir = FLAGS.out_dir if len(specs) == 1 else os.path.join(FLAGS.out_dir, spec.split(":")[0])
            evaluate(spec, path, out_dir, model, judge, index, count)
    except DataError as err:
        sys.exit(f"error: {err}")
    finally:
        model.close()


if __name__ == "__main__":
    flags.mark_flags_as_required(["benchmark", "out_dir"])
    app.run(main)
