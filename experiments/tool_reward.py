"""Which reward teaches adaptive tool use? From the demo's SFT model, GRPO with the BAT reward,
the DeepEyes reward and accuracy alone, a few seeds each, then greedy eval on the held-out split.
Writes docs/tool_reward.md (table) and docs/tool_reward.png (plot): tool-call rate on easy and on
hard items and accuracy, per reward.

    make demo   # or at least its SFT stage: the common start is workdir/demo/sft/export
    python -m experiments.tool_reward [--seeds=0,1,2 --steps=50 --num_eval=64]

Every run is a stage of train/demo.py (own directory under --out_dir, resumable, skipped when
done), so an interrupted experiment continues where it stopped.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train.demo import DIFFICULTIES, Stage, StageError, by_difficulty, eval_stage, read_jsonl  # noqa: E402

METRICS = (("tool_call_rate", "easy"), ("tool_call_rate", "hard"), ("accuracy", "easy"), ("accuracy", "hard"))
LAST_STEPS = 4  # sampled rollouts of the last GRPO steps: more sensitive than the greedy eval


def runs(sft_export: str, out_dir: str, rewards, seeds, steps: int, num_eval: int) -> dict:
    """{label: [(eval predictions path, GRPO metrics path or None) per seed]}, running what has
    not run yet."""
    if not os.path.exists(os.path.join(sft_export, "config.json")):
        raise StageError(f"no SFT export at {sft_export}: run `make demo` (its SFT stage) first")
    log_dir = os.path.join(out_dir, "logs")
    env = {"JAX_COMPILATION_CACHE_DIR": os.path.join(out_dir, "jax_cache"), **os.environ}
    start = os.path.join(out_dir, "eval_sft")
    eval_stage("eval_sft", sft_export, start, num_eval).run(log_dir, env)
    results = {"SFT start": [(os.path.join(start, "predictions.jsonl"), None)]}
    for reward in rewards:
        results[reward] = []
        for seed in seeds:
            name = f"{reward}_seed{seed}"
            workdir = os.path.join(out_dir, name)
            Stage(f"grpo_{name}", ["-m", "train.grpo", "--config=configs/grpo.py:demo", f"--workdir={workdir}",
                                   f"--config.init_checkpoint={sft_export}", f"--config.reward.kind={reward}",
                                   f"--config.seed={seed}", f"--config.total_steps={steps}"],
                  os.path.join(workdir, "export", "config.json")).run(log_dir, env)
            evaluated = os.path.join(out_dir, f"eval_{name}")
            eval_stage(f"eval_{name}", os.path.join(workdir, "export"), evaluated, num_eval).run(log_dir, env)
            results[reward].append((os.path.join(evaluated, "predictions.jsonl"),
                                    os.path.join(workdir, "metrics.jsonl")))
    return results


def sampled_rates(metrics_path: str) -> dict[str, float]:
    """Tool-call rate (percent) on easy and hard prompts in the sampled rollouts of the last steps."""
    rows = read_jsonl(metrics_path)[-LAST_STEPS:]
    return {d: 100.0 * float(np.mean([r[f"tool_call_rate_{d}"] for r in rows if f"tool_call_rate_{d}" in r]))
            for d in DIFFICULTIES}


def summarize(results: dict) -> dict:
    """{label: {column: per-seed values}}: greedy eval metrics, then sampled tool-call rates."""
    out = {}
    for label, runs_of_label in results.items():
        evals = [by_difficulty(predictions) for predictions, _ in runs_of_label]
        out[label] = {f"eval {'tool-call' if m == 'tool_call_rate' else m} {d} %": [e[d][m] for e in evals]
                      for m, d in METRICS}
        sampled = [sampled_rates(metrics) for _, metrics in runs_of_label if metrics]
        for d in DIFFICULTIES:
            out[label][f"sampled tool-call {d} %"] = [r[d] for r in sampled]
    return out


def markdown(summary: dict, settings: str) -> str:
    columns = list(next(iter(summary.values())))
    lines = ["| start / reward | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for label, values in summary.items():
        cells = [(f"{np.mean(v):.1f}" + (f" ({min(v):.0f}-{max(v):.0f})" if len(v) > 1 else "")) if v else "-"
                 for v in values.values()]
        lines.append(f"| {label} | {len(values[columns[0]])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\nMean over seeds (min-max in brackets). The first four columns are the greedy "
                               f"eval on held-out items; the last two are the sampled GRPO rollouts of the last "
                               f"{LAST_STEPS} steps. {settings}\n")


def plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary)
    columns = list(summary[labels[0]])
    fig, ax = plt.subplots(figsize=(9, 4.6))
    width = 0.8 / len(columns)
    for k, column in enumerate(columns):
        xs = np.arange(len(labels)) + (k - (len(columns) - 1) / 2) * width
        ax.bar(xs, [np.mean(summary[label][column]) if summary[label][column] else 0 for label in labels], width,
               label=column)
        for x, label in zip(xs, labels):  # each seed as a dot
            ax.plot([x] * len(summary[label][column]), summary[label][column], "k.", ms=3)
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    try:
        results = runs(FLAGS.sft_export, FLAGS.out_dir, FLAGS.rewards, FLAGS.seeds, FLAGS.steps, FLAGS.num_eval)
        summary = summarize(results)
    except StageError as err:
        sys.exit(f"[tool_reward] {err}")
    settings = (f"GRPO of the demo preset from {FLAGS.sft_export}, {FLAGS.steps} steps of 4 prompts x 8 samples, "
                f"sampling seeds {','.join(FLAGS.seeds)}; greedy eval on {FLAGS.num_eval} held-out synthetic "
                f"items. Command: python -m experiments.tool_reward --steps={FLAGS.steps} "
                f"--seeds={','.join(FLAGS.seeds)} --num_eval={FLAGS.num_eval}")
    os.makedirs(FLAGS.docs_dir, exist_ok=True)
    table = markdown(summary, settings)
    with open(os.path.join(FLAGS.docs_dir, "tool_reward.md"), "w") as f:
        f.write("# Tool use by reward (experiments/tool_reward.py)\n\nWhat it shows, and why, is in the README "
                "(\"Which reward teaches adaptive tool use?\").\n\n" + table)
    plot(summary, os.path.join(FLAGS.docs_dir, "tool_reward.png"))
    print(table)


if __name__ == "__main__":
    # Defined here, not on import: eval.main, imported with this module, has its own --out_dir.
    flags.DEFINE_string("sft_export", "workdir/demo/sft/export",
                        "The common start: an SFT export of the demo preset (make demo writes it).")
    flags.DEFINE_string("out_dir", "workdir/tool_reward", "Where the runs write.")
    flags.DEFINE_string("docs_dir", "docs", "Where the table and plot go.")
    flags.DEFINE_list("rewards", ["bat", "deepeyes", "accuracy"], "reward.kind values compared.")
    flags.DEFINE_list("seeds", ["0", "1", "2"],
                      "GRPO sampling seeds per reward (the prompts and their order stay the same).")
    flags.DEFINE_integer("steps", 50, "GRPO steps per run (the demo's GRPO stage runs 40).")
    flags.DEFINE_integer("num_eval", 64, "Held-out items evaluated per run.")
    app.run(main)
