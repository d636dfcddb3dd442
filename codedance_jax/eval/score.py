"""Re-scores predictions without a model: after a rule fix, or for another system's outputs.

    python -m codedance_jax.eval.score --benchmark=NAME --data=PATH --predictions=FILE [--out=summary.json]

FILE is JSONL, one `{"id": ..., "response": ...}` per line; the response is the full final
assistant text (the answer is extracted as in eval.main) or a bare answer. eval.main's own
predictions.jsonl works as is. Predictions for ids the benchmark does not have are an error.
"""
from __future__ import annotations

import sys

from absl import app, flags

from codedance_jax.eval import predictions, registry, scoring, summary
from codedance_jax.eval.items import DataError
from codedance_jax.logging_setup import quiet_library_logs

FLAGS = flags.FLAGS


def main(argv):
    del argv
    quiet_library_logs()
    try:
        benchmark = registry.get(FLAGS.benchmark)
        dataset = benchmark.read(FLAGS.data)
        judge = None
        if FLAGS.judge_url:
            from codedance_jax.rewards.judge import Judge, JudgeConfig
            judge = Judge(JudgeConfig(base_url=FLAGS.judge_url, model=FLAGS.judge_model))
        lines = predictions.read_predictions(FLAGS.predictions, torn_tail=False)
        records = scoring.rescore(benchmark, dataset, lines, FLAGS.predictions, judge)
        result = summary.summarize(benchmark, dataset, records)
    except DataError as err:
        sys.exit(f"error: {err}")
    print(summary.table(result))
    if FLAGS.out:
        summary.write(result, FLAGS.out)


if __name__ == "__main__":
    # Defined here, not on import: eval.main, imported with this module, has its own --benchmark.
    flags.DEFINE_string("benchmark", None, "Benchmark, NAME[:key=value]...")
    flags.DEFINE_string("data", None, "The benchmark's data path (nothing for synthetic).")
    flags.DEFINE_string("predictions", None, "JSONL of {\"id\", \"response\"} lines.")
    flags.DEFINE_string("out", None, "Write the summary JSON here (it is printed either way).")
    flags.DEFINE_string("judge_url", None, "OpenAI-compatible judge server for free-form answers the rules call wrong.")
    flags.DEFINE_string("judge_model", "judge", "Judge model name.")
    flags.mark_flags_as_required(["benchmark", "predictions"])
    app.run(main)
