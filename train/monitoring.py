"""What a run reports: metrics JSONL, a PNG of the curves, optional TensorBoard, preemption."""
from __future__ import annotations

import json
import os
import signal

import matplotlib

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
    """Turns SIGTERM (what a TPU VM gets before preemption) into a flag the loop checks after
    each step, so it can save a checkpoint and exit cleanly instead of dying mid-step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
