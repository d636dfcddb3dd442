"""`make demo`: the main job in miniature on a CPU. SFT of the `demo` preset on the task suite,
then GRPO with the BAT reward, then greedy eval of both on the held-out split; prints accuracy and
tool-call rate on easy and hard items after SFT and after GRPO.

    python -m train.demo [--workdir=workdir/demo]

Each stage is the real binary (train.sft, train.grpo, codedance_jax.eval.main) in its own
directory under --workdir, and each is resumable: run the demo again after an interruption and
finished stages are skipped, an interrupted one resumes from its last checkpoint (or, for eval,
its last written item). A failing stage stops the demo with its name, exit code and the tail of
its log (WORKDIR/logs/STAGE.log).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app, flags

from codedance_jax.data.trajectories import EASY, HARD
from configs import grpo as grpo_config
from train.monitoring import plot_curves


DIFFICULTIES = (EASY, HARD)
CURVES = ("reward", "tool_call_rate_easy", "tool_call_rate_hard", "accuracy_easy", "accuracy_hard")
LOG_TAIL_CHARS = 3000


class StageError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]
    done_file: str  # written last by the binary: its presence means the stage finished

    def run(self, log_dir: str, env: dict) -> float:
        """Runs the stage unless it finished before; its output goes to the terminal and its log.
        Returns the seconds it took (0 when skipped)."""
        if os.path.exists(self.done_file):
            print(f"[demo] {self.name}: already done ({self.done_file})", flush=True)
            return 0.0
        os.makedirs(log_dir, exist_ok=True)
        log_path = os.path.join(log_dir, f"{self.name}.log")
        print(f"[demo] {self.name}: {' '.join(self.argv)}", flush=True)
        started = time.perf_counter()
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, *self.argv], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, env=env)
            for chunk in iter(lambda: process.stdout.read1(4096), b""):
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                log.write(chunk)
            code = process.wait()
        if code != 0 or not os.path.exists(self.done_file):
            with open(log_path, "rb") as log:
                tail = log.read().decode("utf-8", "replace")[-LOG_TAIL_CHARS:]
            why = f"exit code {code}" if code else f"it exited without writing {self.done_file}"
            raise StageError(f"stage {self.name!r} failed ({why}); the end of {log_path}:\n{tail}\n"
                             f"Run the demo again to resume from where it stopped.")
        return time.perf_counter() - started


def eval_stage(name: str, ckpt_dir: str, out_dir: str, num_items: int, extra=()) -> Stage:
    # Greedy, no system prompt (SFT trained without one), the image budget and turn limits the
    # GRPO stage rolls out with.
    c = grpo_config.get_config("demo")
    r = c.rollout
    return Stage(name, ["-m", "codedance_jax.eval.main", f"--ckpt_dir={ckpt_dir}", f"--out_dir={out_dir}",
                        f"--benchmark=synthetic:num={num_items}", "--system_prompt=", f"--max_turns={r.max_turns}",
                        f"--max_turn_tokens={r.max_turn_tokens}", f"--max_tool_tokens={r.max_tool_tokens}",
                        f"--max_context={r.max_context}", "--num_slots=16", f"--max_pixels={c.data.max_pixels}",
                        f"--sandbox_workers={c.sandbox.num_workers}", "--progress=false", *extra],
                 os.path.join(out_dir, "summary.json"))


def stages(workdir: str, num_eval: int, sft_args=(), grpo_args=(), eval_args=()) -> list[Stage]:
    sft, grpo = os.path.join(workdir, "sft"), os.path.join(workdir, "grpo")
    return [
        Stage("sft", ["-m", "train.sft", "--config=configs/sft.py:demo", f"--workdir={sft}", *sft_args],
              os.path.join(sft, "export", "config.json")),
        Stage("grpo", ["-m", "train.grpo", "--config=configs/grpo.py:demo", f"--workdir={grpo}",
                       f"--config.init_checkpoint={os.path.join(sft, 'export')}", *grpo_args],
              os.path.join(grpo, "export", "config.json")),
        eval_stage("eval_sft", os.path.join(sft, "export"), os.path.join(workdir, "eval_sft"), num_eval, eval_args),
        eval_stage("eval_grpo", os.path.join(grpo, "export"), os.path.join(workdir, "eval_grpo"), num_eval,
                   eval_args),
    ]


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def by_difficulty(predictions_path: str) -> dict[str, dict[str, float]]:
    """Accuracy and tool-call rate (percent) and item count per difficulty, from eval.main's predictions."""
    rows = [r for r in read_jsonl(predictions_path) if "skipped" not in r]
    out = {}
    for difficulty in DIFFICULTIES:
        part = [r for r in rows if r["fields"].get("difficulty") == difficulty]
        if not part:
            raise StageError(f"{predictions_path}: no scored {difficulty} items")
        out[difficulty] = {"accuracy": 100.0 * sum(bool(r["correct"]) for r in part) / len(part),
                           "tool_call_rate": 100.0 * sum(r["tool_calls"] > 0 for r in part) / len(part),
                           "items": len(part)}
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown rows: one per (model, difficulty)."""
    lines = ["| after | items | accuracy % | tool-call rate % |", "|---|---|---|---|"]
    for model, parts in results.items():
        for difficulty, r in parts.items():
            lines.append(f"| {model}, {difficulty} | {r['items']} | {r['accuracy']:.1f} | {r['tool_call_rate']:.1f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    f = flags.FLAGS
    workdir = f.workdir
    times = {}
    # The two evals run the same programs, and a resumed stage recompiles nothing: one JAX cache.
    env = {"JAX_COMPILATION_CACHE_DIR": os.path.join(workdir, "jax_cache"), **os.environ}
    try:
        for stage in stages(workdir, f.num_eval, f.sft_arg, f.grpo_arg, f.eval_arg):
            times[stage.name] = stage.run(os.path.join(workdir, "logs"), env)
        results = {name: by_difficulty(os.path.join(workdir, f"eval_{name}", "predictions.jsonl"))
                   for name in ("sft", "grpo")}
    except StageError as err:
        sys.exit(f"[demo] {err}")
    curves = os.path.join(workdir, "curves.png")
    plot_curves(read_jsonl(os.path.join(workdir, "grpo", "metrics.jsonl")), curves, CURVES)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"by_difficulty": results, "stage_seconds": times}, f, indent=2)
    print("\n[demo] held-out synthetic items, greedy:\n" + table(results))
    print("[demo] stage wall time (s, 0 = done earlier): "
          + ", ".join(f"{name} {seconds:.0f}" for name, seconds in times.items()))
    print(f"[demo] GRPO curves (reward, tool-call rate and accuracy on easy and hard items): {curves}")
    print(f"[demo] eval reports: {os.path.join(workdir, 'eval_sft', 'report.html')} and "
          f"{os.path.join(workdir, 'eval_grpo', 'report.html')}")


if __name__ == "__main__":
    # Flags are defined here, not on import, so experiments can reuse the stages (as in train/grpo.py).
    flags.DEFINE_string("workdir", "workdir/demo", "Where the stages write (one directory each).")
    flags.DEFINE_integer("num_eval", 64, "Held-out items evaluated after SFT and after GRPO.")
    flags.DEFINE_multi_string("sft_arg", [], "An extra train.sft flag (repeatable), e.g. "
                              "--sft_arg=--config.total_steps=50.")
    flags.DEFINE_multi_string("grpo_arg", [], "An extra train.grpo flag (repeatable), e.g. "
                              "--grpo_arg=--config.reward.kind=deepeyes.")
    flags.DEFINE_multi_string("eval_arg", [], "An extra codedance_jax.eval.main flag (repeatable), "
                              "e.g. --eval_arg=--max_turn_tokens=128.")
    app.run(main)
