"""What a run reports: metrics JSONL, a PNG of the curves, optional TensorBoard, preemption."""
from __future__ import annotations

import json
import os
import signal

import jax
import matplotlib
from jax.experimental import multihost_utils

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOTTED = ("loss", "learning_rate", "grad_norm")


class MetricsWriter:
    """Appends one JSON object per logged step to WORKDIR/metrics.jsonl (and TensorBoard)."""

    def __init__(self, workdir: str, tensorboard: bool = False):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ImportError("config.tensorboard=True needs the tensorboardX package "
                                  "(pip install tensorboardX)") from e
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tensorboard is not None:
            for name, value in metrics.items():
                self.tensorboard.add_scalar(name, value, step)

    def truncate_after(self, step: int) -> None:
        """Drops rows past `step` (written after the checkpoint a run resumes from), atomically."""
        rows = self.read()
        kept = [r for r in rows if r["step"] <= step]
        if len(kept) == len(rows):
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def plot_curves(records: list[dict], png_path: str, names=PLOTTED) -> None:
    """One panel per metric against the step; written atomically so a reader never sees half a file."""
    names = [n for n in names if any(n in r for r in records)]
    if not names:
        return
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.4 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        points = [(r["step"], r[name]) for r in records if name in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


class PreemptionGuard:
    """Turns SIGTERM (what a TPU VM gets before preemption) into a decision the loop takes between
    steps, so it saves a checkpoint and exits cleanly instead of dying mid-step.

    One process: a Python handler sets a flag. Several processes: all must stop at the same step,
    or those still training hang in collectives the others left (and checkpoint different steps),
    while SIGTERM may reach only one of them. JAX's preemption sync manager, which
    `jax.distributed.initialize` starts and which owns SIGTERM through its own C handler, agrees on
    that step: a notice on any process starts a background protocol that picks the step after the
    furthest process's, and checking it costs no communication per step. A Python handler would
    take the signal away from it, so with several processes none is installed while training.
    A notice the protocol places before the steps still to run (one during a resumed run's start,
    or right after orbax re-reported an older saved step) is missed: training goes on as without
    the guard, from the last regular checkpoint.
    """

    def __init__(self):
        self.requested = False
        self._multi_process = jax.process_count() > 1
        self._previous = None  # the handler ours replaced, once installed
        if not self._multi_process:
            self._install()

    def stop_at(self, step: int) -> bool:
        """Whether to save and stop at `step` (every process gets the same answer). Call it at every
        step with the training step: orbax reports the steps it saves to the same protocol."""
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def training_done(self) -> None:
        """After the last step nothing is left to agree on: SIGTERM becomes a local flag again, so one
        during the final save or export lets it finish (a rerun redoes an export a lost machine cut
        short) instead of starting a sync protocol that processes already exiting never join."""
        if self._multi_process:
            self._install()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True
