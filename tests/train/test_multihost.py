"""Two local CPU processes train as one job (jax.distributed over gloo, per-process data, global
arrays from process-local batches, one shared checkpoint and export), and a SIGTERM that reaches
only one of them makes both save the same step and stop; a rerun resumes there on both."""
import os
import signal
import time

import pytest

from binary_runs import committed_steps, finish_processes, logged_steps, process_stderr, start_processes

NEVER_REACHED = 10_000  # the first run ends only by preemption, so where it stops is not timing-bound
FLAGS = ["--config=configs/sft.py:demo", "--config.data.max_pixels=12544", "--config.batch_size=4",
         "--config.length_buckets=(768,)", "--config.data.num_synthetic=16", "--config.log_every=1",
         f"--config.checkpoint_every={NEVER_REACHED}"]


@pytest.fixture
def start_job(compile_cache):
    """Starts a two-process train.sft job; any process still running at teardown (after a
    failure) is killed."""
    started = []

    def start(workdir, total_steps):
        processes = start_processes("train.sft", workdir, [*FLAGS, f"--config.total_steps={total_steps}"],
                                    cache_dir=compile_cache)
        started.extend(processes)
        return processes

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_first_logged_step(processes, workdir, timeout=600):
    deadline = time.time() + timeout
    while not logged_steps(workdir):
        assert time.time() < deadline, "no step was logged"
        assert all(p.poll() is None for p in processes), [process_stderr(workdir, i)[-2000:] for i in range(2)]
        time.sleep(0.2)


def test_two_processes_train_and_stop_together_when_one_is_preempted(tmp_path, start_job):
    workdir = str(tmp_path)
    processes = start_job(workdir, NEVER_REACHED)
    wait_for_first_logged_step(processes, workdir)
    processes[1].send_signal(signal.SIGTERM)  # process 0, the chief, is not told
    finish_processes(processes, workdir)

    # One checkpoint, at the step both processes stopped at; orbax commits a multi-process save
    # only once every process has written its part.
    [saved] = committed_steps(workdir)
    assert 1 <= saved == max(r["step"] for r in logged_steps(workdir)) < NEVER_REACHED
    for i in range(2):
        assert f"saved a checkpoint at step {saved} and stopping" in process_stderr(workdir, i)
    assert not os.path.exists(os.path.join(workdir, "export"))

    # The rerun resumes on both processes, trains one more step and exports.
    finish_processes(start_job(workdir, saved + 1), workdir)
    for i in range(2):
        assert f"resumed from step {saved}" in process_stderr(workdir, i)
    assert [r["step"] for r in logged_steps(workdir)] == list(range(1, saved + 2))  # written once, by process 0
    assert committed_steps(workdir) == [saved, saved + 1]
    assert os.path.isdir(os.path.join(workdir, "export", "params"))
