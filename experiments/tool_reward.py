"""Which reward teaches adaptive tool use? From the demo's SFT model, GRPO with the BAT reward,
the DeepEyes reward and accuracy alone, a few seeds each, then greedy eval on the held-out split.
Writes docs/tool_reward.md (table) and docs/tool_reward.png (plot): tool-call rate on easy and on
hard items and accuracy, per reward.

    make demo   # or at least its SFT stage: the common start is workdir/demo/sft/export
    python -m experiments.tool_reward [--seeds=0,1 --steps=30 --num_eval=64]

Every run is a stage of train/demo.py (own directory under --out_dir, resumable, skipped when
done), so an interrupted experiment continues where it stopped.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train.demo import DIFFICULTIES, Stage, StageError, by_difficulty, eval_stage  # noqa: E402

_SFT = flags.DEFINE_string("sft_export", "workdir/demo/sft/export", "The common start: an SFT export "
                           "of the demo preset (make demo writes it).")
_OUT = flags.DEFINE_string("out_dir", "workdir/tool_reward", "Where the runs write.")
_DOCS = flags.DEFINE_string("docs_dir", "docs", "Where the table and plot go.")
_REWARDS = flags.DEFINE_list("rewards", ["bat", "deepeyes", "accuracy"], "reward.kind values compared.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "GRPO sampling seeds per reward (the prompts and their order stay the same).")
_STEPS = flags.DEFINE_integer("steps", 30, "GRPO steps per run.")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 64, "Held-out items evaluated per run.")

METRICS = (("tool_call_rate", "easy"), ("tool_call_rate", "hard"), ("accuracy", "easy"), ("accuracy", "hard"))


def runs(sft_export: str, out_dir: str, rewards, seeds, steps: int, num_eval: int) -> dict:
    """{label: [eval predictions path per seed]}, running what has not run yet."""
    if not os.path.exists(os.path.join(sft_export, "config.json")):
        raise StageError(f"no SFT export at {sft_export}: run `make demo` (its SFT stage) first")
    log_dir = os.path.join(out_dir, "logs")
    env = {"JAX_COMPILATION_CACHE_DIR": os.path.join(out_dir, "jax_cache"), **os.environ}
    start = os.path.join(out_dir, "eval_sft")
    eval_stage("eval_sft", sft_export, start, num_eval).run(log_dir, env)
    results = {"SFT start": [os.path.join(start, "predictions.jsonl")]}
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
            results[reward].append(os.path.join(evaluated, "predictions.jsonl"))
    return results


def summarize(results: dict) -> dict:
    """{label: {(metric, difficulty): per-seed values}}."""
    out = {}
    for label, paths in results.items():
        parts = [by_difficulty(path) for path in paths]
        out[label] = {(m, d): [p[d][m] for p in parts] for m, d in METRICS}
    return out


def markdown(summary: dict, settings: str) -> str:
    header = " | ".join(f"{m.replace('_', '-')} {d} %" for m, d in METRICS)
    lines = [f"| start / reward | seeds | {header} |", "|---|---|" + "---|" * len(METRICS)]
    for label, values in summary.items():
        cells = []
        for key in METRICS:
            v = values[key]
            cells.append(f"{np.mean(v):.1f}" + (f" ({min(v):.0f}-{max(v):.0f})" if len(v) > 1 else ""))
        lines.append(f"| {label} | {len(next(iter(values.values())))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMean over seeds (min-max in brackets). {settings}\n"


def plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(METRICS)
    for k, key in enumerate(METRICS):
        xs = np.arange(len(labels)) + (k - (len(METRICS) - 1) / 2) * width
        means = [np.mean(summary[label][key]) for label in labels]
        ax.bar(xs, means, width, label=f"{key[0].replace('_', ' ')}, {key[1]}")
        for x, label in zip(xs, labels):  # each seed as a dot
            ax.plot([x] * len(summary[label][key]), summary[label][key], "k.", ms=3)
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel("% of held-out items")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    try:
        results = runs(_SFT.value, _OUT.value, _REWARDS.value, _SEEDS.value, _STEPS.value, _NUM_EVAL.value)
        summary = summarize(results)
    except StageError as err:
        sys.exit(f"[tool_reward] {err}")
    settings = (f"GRPO of the demo preset from {_SFT.value}, {_STEPS.value} steps of 4 prompts x 8 samples, "
                f"seeds {','.join(_SEEDS.value)}; greedy eval on {_NUM_EVAL.value} held-out synthetic items "
                f"(easy and hard: {', '.join(DIFFICULTIES)}).")
    os.makedirs(_DOCS.value, exist_ok=True)
    table = markdown(summary, settings)
    with open(os.path.join(_DOCS.value, "tool_reward.md"), "w") as f:
        f.write("# Tool use by reward (experiments/tool_reward.py)\n\n" + table)
    plot(summary, os.path.join(_DOCS.value, "tool_reward.png"))
    print(table)


if __name__ == "__main__":
    app.run(main)
