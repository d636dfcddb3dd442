"""`make demo` in a shortened form: the demo driver runs the real SFT, GRPO and eval binaries of
the `demo` preset end to end, writes the table, curves and reports, skips finished stages when run
again, and names the stage that fails."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A few tiny steps with one length bucket each, so each binary compiles little.
SFT = ["--config.total_steps=2", "--config.batch_size=2", "--config.length_buckets=(768,)",
       "--config.data.num_synthetic=8", "--config.checkpoint_every=2", "--config.log_every=1"]
GRPO = ["--config.total_steps=1", "--config.grpo.prompts_per_step=1", "--config.grpo.group_size=2",
        "--config.rollout.num_slots=2", "--config.rollout.max_turns=2", "--config.rollout.max_turn_tokens=24",
        "--config.rollout.max_response_tokens=48", "--config.sandbox.num_workers=1"]
EVAL = ["--max_turns=2", "--max_turn_tokens=24"]


def run_demo(workdir, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run([sys.executable, "-m", "train.demo", f"--workdir={workdir}", "--num_eval=4", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_demo_chain_runs_end_to_end_and_resumes(tmp_path):
    workdir = str(tmp_path / "demo")
    result = run_demo(workdir, *(f"--sft_arg={a}" for a in SFT), *(f"--grpo_arg={a}" for a in GRPO),
                      *(f"--eval_arg={a}" for a in EVAL))
    assert result.returncode == 0, result.stderr[-3000:]
    for path in ("sft/export/config.json", "grpo/export/config.json", "eval_sft/report.html",
                 "eval_grpo/report.html", "curves.png", "results.json"):
        assert os.path.exists(os.path.join(workdir, path)), path
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)["by_difficulty"]
    assert set(results) == {"sft", "grpo"} and all(set(r) == {"easy", "hard"} for r in results.values())
    assert sum(r["items"] for r in results["grpo"].values()) == 4
    assert "| grpo, hard |" in result.stdout
    with open(os.path.join(workdir, "grpo", "metrics.jsonl")) as f:
        logged = json.loads(f.readline())
    assert "reward" in logged and {"tool_call_rate_easy", "tool_call_rate_hard"} & set(logged)  # the prompt's tag

    again = run_demo(workdir)  # every stage finished: nothing runs, the table is printed again
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already done") == 4 and "| sft, easy |" in again.stdout


def test_a_failing_stage_is_named(tmp_path):
    result = run_demo(str(tmp_path / "demo"), "--sft_arg=--config.batch_size=3",
                      "--sft_arg=--config.grad_accum_steps=2")
    assert result.returncode != 0
    assert "stage 'sft' failed (exit code 1)" in result.stderr
    assert "batch_size 3 is not divisible by grad_accum_steps" in result.stderr
