"""Preemption across hosts: SIGTERM reaches only one of two local CPU processes training as one
job, and both save the same step, stop cleanly, and a rerun resumes from that step."""
import os
import signal
import subprocess
import sys
import time

import pytest
from binary_runs import ROOT, committed_steps, logged_steps
from test_multihost import free_port

NEVER_REACHED = 10_000  # the run only ends by preemption, so the step it stops at is not timing-bound
FLAGS = ["--config=configs/sft.py:demo", "--config.data.max_pixels=12544", "--config.batch_size=4",
         "--config.length_buckets=(768,)", "--config.data.num_synthetic=16", "--config.log_every=1",
         f"--config.checkpoint_every={NEVER_REACHED}"]


@pytest.fixture
def start_job(compile_cache):
    """Starts both processes of a two-process job (stderr to files: a pipe nobody reads while
    waiting could fill and stall a process); any still running at teardown, after a failure, are
    killed."""
    started = []

    def start(workdir, total_steps):
        port = free_port()
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "JAX_COMPILATION_CACHE_DIR": compile_cache}
        processes = []
        for i in range(2):
            with open(os.path.join(workdir, f"stderr_{i}.txt"), "a") as err:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "train.sft", f"--workdir={workdir}", *FLAGS,
                     f"--config.total_steps={total_steps}", "--config.distributed=True",
                     f"--config.coordinator_address=127.0.0.1:{port}", "--config.num_processes=2",
                     f"--config.process_id={i}"],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err))
        started.extend(processes)
        return processes

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for_first_logged_step(processes, workdir, timeout=600):
    deadline = time.time() + timeout
    while not logged_steps(workdir):
        assert time.time() < deadline, "no step was logged"
        assert all(p.poll() is None for p in processes), stderr_tails(workdir)
        time.sleep(0.2)


def finish_job(processes, workdir, timeout=300):
    for p in processes:
        assert p.wait(timeout=timeout) == 0, stderr_tails(workdir)


def stderr_of(workdir, i):
    with open(os.path.join(workdir, f"stderr_{i}.txt")) as f:
        return f.read()


def stderr_tails(workdir):
    return "\n".join(f"process {i}:\n{stderr_of(workdir, i)[-2000:]}" for i in range(2))


def test_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path, start_job):
    workdir = str(tmp_path)
    processes = start_job(workdir, NEVER_REACHED)
    wait_for_first_logged_step(processes, workdir)
    processes[1].send_signal(signal.SIGTERM)  # process 0, the chief, is not told
    finish_job(processes, workdir)

    # One checkpoint, at the step both processes stopped at; orbax commits a multi-process save
    # only once every process has written its part.
    [saved] = committed_steps(workdir)
    assert 1 <= saved == max(r["step"] for r in logged_steps(workdir)) < NEVER_REACHED
    for i in range(2):
        assert f"saved a checkpoint at step {saved} and stopping" in stderr_of(workdir, i)
    assert not os.path.exists(os.path.join(workdir, "export"))

    # A rerun resumes from it on both processes; with no steps left it goes straight to the export
    # (training on after a resume, and its exactness, are the single-process tests' subject).
    finish_job(start_job(workdir, saved), workdir)
    for i in range(2):
        assert f"resumed from step {saved}" in stderr_of(workdir, i)
    assert os.path.isdir(os.path.join(workdir, "export", "params"))
