"""Resource limits shared by the host and the processes inside the sandbox.

The host validates them once and sends them to the zygote as JSON, so every limit has
a single definition here and a single place where it is checked.
"""
from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 15.0          # wall clock per execute() call
    memory_mb: int = 1024            # per process: address space added to the warm interpreter;
                                     # per session, where a memory cgroup is writable: see cgroups.py
    disk_mb: int = 256               # size of the session's tmpfs (cwd and /tmp)
    max_file_mb: int = 128           # RLIMIT_FSIZE: largest single file user code may write
    max_processes: int = 64          # RLIMIT_NPROC for the session's own uid (threads count)
    max_open_files: int = 256        # RLIMIT_NOFILE
    max_output_bytes: int = 64 * 1024  # per stream (stdout, stderr); head and tail are kept
    max_images: int = 8              # images returned per call
    max_image_pixels: int = 4096 * 4096  # larger images are scaled down to fit
    max_png_bytes: int = 16 * 1024 * 1024
    max_code_bytes: int = 1024 * 1024
    max_seed_bytes: int = 64 * 1024 * 1024  # total size of files= per call

    def __post_init__(self):
        def positive(name, minimum=1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
                raise ValueError(f"Limits.{name} must be a number >= {minimum}, got {value!r}")

        positive("timeout_s", 0.01)
        for name in ("memory_mb", "disk_mb", "max_file_mb", "max_processes", "max_open_files",
                     "max_output_bytes", "max_images", "max_image_pixels", "max_png_bytes",
                     "max_code_bytes", "max_seed_bytes"):
            positive(name)
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"Limits.{name} must be an int, got {getattr(self, name)!r}")
        if self.max_open_files < 32:
            raise ValueError("Limits.max_open_files must be >= 32 (the interpreter needs some)")
        if self.max_processes < 4:
            raise ValueError("Limits.max_processes must be >= 4 (threads count against it)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Limits":
        return cls(**json.loads(text))
