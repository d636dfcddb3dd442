"""Running a training binary as a subprocess and reading what it wrote (imported by name:
tests/ is not a package). Runs of one module share a persistent compilation cache."""
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(module, workdir, overrides, cache_dir, devices=2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_COMPILATION_CACHE_DIR": cache_dir}
    return subprocess.Popen([sys.executable, "-m", module, f"--workdir={workdir}", *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start_processes(module, workdir, overrides, count=2, cache_dir=None):
    """`count` processes of one job (jax.distributed over gloo on a free local port), one CPU
    device each. Process i's stderr goes to WORKDIR/stderr_i.txt: a pipe nobody reads while a
    test waits on the job could fill and stall the process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    if cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    distributed = ["--config.distributed=True", f"--config.coordinator_address=127.0.0.1:{port}",
                   f"--config.num_processes={count}"]
    os.makedirs(workdir, exist_ok=True)
    processes = []
    for i in range(count):
        with open(os.path.join(workdir, f"stderr_{i}.txt"), "a") as err:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", module, f"--workdir={workdir}", *overrides, *distributed,
                 f"--config.process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err))
    return processes


def process_stderr(workdir, i):
    with open(os.path.join(workdir, f"stderr_{i}.txt")) as f:
        return f.read()


def finish_processes(processes, workdir, timeout=600):
    for process in processes:
        assert process.wait(timeout=timeout) == 0, "\n".join(
            f"process {i}:\n{process_stderr(workdir, i)[-2000:]}" for i in range(len(processes)))


def logged_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_until(process, workdir, step, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r["step"] >= step for r in logged_steps(workdir)):
            return
        if process.poll() is not None:
            raise AssertionError(f"run exited early:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"run did not reach step {step} in {timeout} s")


def finish(process, timeout=600):
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]


def committed_steps(workdir):
    ckpt = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []


def final_params(workdir):
    """The exported parameters on one local device, whatever topology wrote them."""
    from models.qwen2_5_vl import Qwen2_5_VL
    return Qwen2_5_VL.from_checkpoint(os.path.join(workdir, "export")).params()
