"""eval.main end to end with the tiny random checkpoint: predictions, summary, report, resume
after an interrupted run, two-process sharding and merge, skips, errors, and eval.score on
the binary's own output."""
import json
import os
import subprocess
import sys
import time

import pytest

from codedance_jax.eval import predictions
from eval_fixtures import png, write_parquet
from eval_run import ENGINE_FLAGS, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = "--benchmark=synthetic:num=4"


def lines(path):
    with open(path) as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def single_run(tiny_ckpt, tmp_path_factory):
    """A run interrupted after two items (a torn half-written line left behind), then resumed."""
    out = str(tmp_path_factory.mktemp("single"))
    run_main(f"--ckpt_dir={tiny_ckpt}", SYNTHETIC, f"--out_dir={out}", "--limit=2")
    first = lines(os.path.join(out, "predictions.jsonl"))
    with open(os.path.join(out, "predictions.jsonl"), "a") as f:
        f.write('{"id": "synthetic-1-2", "respo')  # a crash in the middle of writing item 3
    run_main(f"--ckpt_dir={tiny_ckpt}", SYNTHETIC, f"--out_dir={out}")
    return out, first


def test_run_writes_every_item_once_and_resume_keeps_finished_ones(single_run):
    out, first = single_run
    records = [json.loads(line) for line in lines(os.path.join(out, "predictions.jsonl"))]
    assert [r["id"] for r in records] == [f"synthetic-1-{k}" for k in range(4)]
    assert lines(os.path.join(out, "predictions.jsonl"))[:2] == first  # finished items were not re-run
    for record in records:
        assert record["finish_reason"] and record["turns"] and record["generated_tokens"] > 0
        assert record["num_turns"] >= 1 and record["decided_by"] and "correct" in record
        assert os.path.exists(os.path.join(out, record["input_image"]))
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["num_items"] == 4 and summary["skipped"] == 0 and summary["missing"] == 0
    assert summary["overall"] == 100 * sum(r["correct"] for r in records) / 4
    assert summary["mean_generated_tokens"] == sum(r["generated_tokens"] for r in records) / 4
    assert "tool_call_rate" in summary and sum(summary["finish_reasons"].values()) == 4
    assert os.path.getsize(os.path.join(out, "report.html")) > 1000


def test_finished_run_needs_no_model(single_run, capsys):
    out, _ = single_run
    before = lines(os.path.join(out, "predictions.jsonl"))
    run_main("--ckpt_dir=/nonexistent", SYNTHETIC, f"--out_dir={out}")
    assert lines(os.path.join(out, "predictions.jsonl")) == before
    assert "num_items" in capsys.readouterr().out


def test_two_processes_split_items_and_process_zero_merges(single_run, tiny_ckpt, tmp_path):
    """Two eval.main processes; process 0 finishes its items first and must wait for process 1,
    although a done marker of process 1 is left from an earlier run that never merged."""
    out = str(tmp_path)
    open(predictions.done_marker(out, 1, 2), "w").close()
    command = [sys.executable, "-m", "codedance_jax.eval.main", *ENGINE_FLAGS, f"--ckpt_dir={tiny_ckpt}", SYNTHETIC,
               f"--out_dir={out}", "--process_count=2", "--merge_timeout_s=600"]
    zero = subprocess.Popen(command + ["--process_index=0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    shard = os.path.join(out, "predictions.0-of-2.jsonl")
    deadline = time.monotonic() + 600
    while not (os.path.exists(shard) and len(lines(shard)) == 2) and zero.poll() is None:
        assert time.monotonic() < deadline, "process 0 did not finish its items"
        time.sleep(0.5)
    time.sleep(3)  # process 0 now polls the markers (every 2 s); the stale one must not make it merge
    assert zero.poll() is None, zero.communicate()[1][-3000:]
    one = subprocess.run(command + ["--process_index=1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    _, err = zero.communicate(timeout=600)
    assert zero.returncode == 0, err[-3000:]
    merged = [json.loads(line) for line in lines(os.path.join(out, "predictions.jsonl"))]
    assert [r["id"] for r in merged] == [f"synthetic-1-{k}" for k in range(4)]
    assert sorted(os.listdir(out)) == ["images", "predictions.jsonl", "report.html", "summary.json"]
    # Greedy decoding and per-id seeds: the sharded run generates what the single run generated.
    single = [json.loads(line) for line in lines(os.path.join(single_run[0], "predictions.jsonl"))]
    assert [r["response"] for r in merged] == [r["response"] for r in single]


def test_bad_rows_and_images_are_counted_skips_naming_file_row_and_field(tiny_ckpt, tmp_path):
    rows = [{"image": {"bytes": png(1), "path": None}, "text": "t", "question": "How many dogs?", "number": 2},
            {"image": {"bytes": b"not an image", "path": None}, "text": "t", "question": "How many cats?", "number": 3},
            {"image": {"bytes": png(2), "path": None}, "text": "t", "question": "How many?", "number": None},
            {"image": None, "text": "t", "question": "How many birds?", "number": 1}]
    data = write_parquet(str(tmp_path / "countbench.parquet"), rows)
    # Two benchmarks in one run: each gets its own folder under --out_dir.
    run_main(f"--ckpt_dir={tiny_ckpt}", "--benchmark=synthetic:num=1,countbenchqa", f"--data=,{data}",
             f"--out_dir={tmp_path}")
    assert len(predictions.read_predictions(str(tmp_path / "synthetic" / "predictions.jsonl"))) == 1
    out = str(tmp_path / "countbenchqa")
    records = {r["id"]: r for r in predictions.read_predictions(os.path.join(out, "predictions.jsonl"))}
    assert sorted(records) == ["0", "1"]
    assert f"{data}, row 1, field 'image'" in records["1"]["skipped"] and "cannot be decoded" in records["1"]["skipped"]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["num_items"] == 1 and summary["skipped"] == 3
    assert any(f"{data}, row 2, field 'number'" in s for s in summary["skips"])
    assert any(f"{data}, row 3, field 'image'" in s for s in summary["skips"])


@pytest.mark.parametrize("args, message", [
    (["--benchmark=nosuch"], "unknown benchmark 'nosuch'; known: chartqa"),
    (["--benchmark=chartqa", "--data=/no/such/ChartQA"], "chartqa: /no/such/ChartQA does not exist"),
    (["--benchmark=synthetic:size=3"], "synthetic: unknown option(s) ['size']"),
])
def test_bad_benchmark_or_data_stops_with_a_clear_error(tmp_path, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main("--ckpt_dir=/nonexistent", f"--out_dir={tmp_path}", *args)
    assert message in str(exit_info.value)


def run_score(*args):
    return subprocess.run([sys.executable, "-m", "codedance_jax.eval.score", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_score_rescores_the_binary_output_and_refuses_unknown_ids(single_run, tmp_path):
    out, _ = single_run
    result = run_score(SYNTHETIC, f"--predictions={out}/predictions.jsonl", f"--out={tmp_path}/rescored.json")
    assert result.returncode == 0, result.stderr
    rescored, original = json.load(open(tmp_path / "rescored.json")), json.load(open(os.path.join(out, "summary.json")))
    assert (rescored["num_items"], rescored["overall"]) == (original["num_items"], original["overall"])
    assert "overall" in result.stdout

    bad = tmp_path / "other.jsonl"
    # Another system's file: its last line has no newline and still counts.
    bad.write_text('{"id": "synthetic-1-0", "response": "yes"}\n{"id": "synthetic-9-9", "response": "3"}')
    result = run_score(SYNTHETIC, f"--predictions={bad}")
    assert result.returncode != 0
    assert f"{bad}: 1 predictions for ids that synthetic" in result.stderr and "line 2: 'synthetic-9-9'" in result.stderr
