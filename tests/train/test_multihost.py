"""Two local CPU processes train as one job: jax.distributed over gloo, per-process data,
global arrays from process-local batches, one shared checkpoint and export."""
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_model(tmp_path):
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device per process
    runs = [subprocess.Popen(
        [sys.executable, "-m", "train.sft", "--config=configs/sft.py:demo", f"--workdir={tmp_path}",
         "--config.total_steps=3", "--config.checkpoint_every=2", "--config.data.max_pixels=12544",
         "--config.batch_size=4", "--config.length_buckets=(768,)", "--config.data.num_synthetic=16",
         "--config.log_every=1",
         "--config.distributed=True", f"--config.coordinator_address=127.0.0.1:{port}",
         "--config.num_processes=2", f"--config.process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by process 0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
    assert (tmp_path / "export" / "params").is_dir()
