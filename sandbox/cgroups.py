"""A memory cgroup per session, so that a session's processes together (with the tmpfs, shared
memory and memfd pages they touch) stay within its memory limit, however many processes it
forks and whatever it unmaps.

The pool makes one directory for itself in the memory hierarchy it may write (see
`_candidates`: cgroup v2 at the top level or below the pool's own cgroup, else the cgroup v1
memory controller below the pool's own cgroup) and one child per session uid, reused by the
sessions that get that uid. `describe()` says which is in force.
The sandbox gets only a write-only descriptor of the child's cgroup.procs. Where neither
hierarchy is writable, `create` returns None and the per-process rlimits are the only bound.
"""
from __future__ import annotations

import errno
import os
import re
import time

PREFIX = "codedance-sandbox-"
LEAF = "codedance-leaf"  # where a v2 cgroup's own processes move so it may hand down controllers


def _mounts():
    """(fstype, mount point, root within the hierarchy, super options) of cgroup mounts."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            tail = fields[fields.index("-") + 1:]
            if tail[0] in ("cgroup", "cgroup2"):
                found.append((tail[0], fields[4], fields[3], tail[2].split(",")))
    return found


def _own_path(controller: str) -> str | None:
    """This process's cgroup path in the hierarchy of `controller` ("" for v2)."""
    with open("/proc/self/cgroup") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read_words(path: str) -> list[str]:
    try:
        with open(path) as handle:
            return handle.read().split()
    except OSError:
        return []


def _own_directory(point: str, root: str, controller: str) -> str:
    """This process's cgroup directory under the mount at `point` (whose root is `root`)."""
    own = _own_path(controller)
    relative = os.path.relpath(own, root) if own and own.startswith(root) else "."
    return os.path.normpath(os.path.join(point, relative))


def _candidates():
    """(version, directory to create the pool's cgroup in), most preferred first:
    - v2 where the top level already hands the memory controller down (a VM's systemd);
    - v2 below this process's own cgroup where the memory controller is available there (a
      container's cgroup namespace; `enable_memory_v2` turns it on);
    - the v1 memory controller below this process's own cgroup."""
    v2 = [(point, root) for fstype, point, root, _ in _mounts() if fstype == "cgroup2"]
    for point, _ in v2:
        if "memory" in _read_words(os.path.join(point, "cgroup.subtree_control")):
            yield "v2", point
    for point, root in v2:
        own = _own_directory(point, root, "")
        if "memory" in _read_words(os.path.join(own, "cgroup.controllers")):
            yield "v2", own
    for fstype, point, root, options in _mounts():
        if fstype == "cgroup" and "memory" in options:
            yield "v1", _own_directory(point, root, "memory")


def enable_memory_v2(directory: str) -> None:
    """Hands cgroup v2's memory controller down to `directory`'s children. v2 refuses that (EBUSY)
    while the cgroup holds processes of its own, as a container's root cgroup does; those then
    move to a leaf child first, as container init systems do. Raises OSError when it cannot."""
    control = os.path.join(directory, "cgroup.subtree_control")
    if "memory" in _read_words(control):
        return
    try:
        return _write(control, "+memory")
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
    leaf = os.path.join(directory, LEAF)
    os.makedirs(leaf, exist_ok=True)
    for pid in _read_words(os.path.join(directory, "cgroup.procs")):
        try:
            _write(os.path.join(leaf, "cgroup.procs"), pid)
        except ProcessLookupError:  # it exited meanwhile
            continue
    _write(control, "+memory")


def _remove_stale(parent: str) -> None:
    """Directories of pools whose process is gone (a crash leaves them behind)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(PREFIX + r"(\d+)-\w+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _remove_tree(os.path.join(parent, name), wait_s=0)


def _remove_tree(directory: str, wait_s: float) -> None:
    """rmdir the session cgroups and the directory; processes still dying get wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            for entry in os.scandir(directory):
                if entry.is_dir(follow_symlinks=False):
                    os.rmdir(entry.path)
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return
            time.sleep(0.02)


def session_limit_mb(memory_mb: int) -> int:
    """memory_mb plus room for the pages the interpreter copies from the zygote, so that one
    process meets its own address-space bound (a MemoryError) before the session's bound (a
    kill)."""
    return memory_mb + max(128, memory_mb // 4)


class MemoryCgroups:
    def __init__(self, version: str, directory: str, memory_mb: int):
        self.version = version
        self.directory = directory
        self.limit = session_limit_mb(memory_mb) * 2**20

    @classmethod
    def create(cls, memory_mb: int) -> "MemoryCgroups | None":
        for version, parent in _candidates():
            _remove_stale(parent)
            directory = os.path.join(parent, f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
            try:
                if version == "v2":
                    enable_memory_v2(parent)
                os.mkdir(directory, 0o700)
            except OSError:
                continue
            groups = cls(version, directory, memory_mb)
            try:
                if version == "v2":  # session cgroups below get the memory controller
                    _write(os.path.join(directory, "cgroup.subtree_control"), "+memory")
                os.close(groups.session_procs(0))  # the limits can be written here
                return groups
            except OSError:
                _remove_tree(directory, wait_s=0)
        return None

    def session_procs(self, uid: int) -> int:
        """A write-only descriptor of the cgroup.procs of the session cgroup for `uid`."""
        path = os.path.join(self.directory, f"s{uid}")
        if not os.path.isdir(path):
            os.mkdir(path, 0o700)
            if self.version == "v2":
                _write(os.path.join(path, "memory.max"), str(self.limit))
                swap = os.path.join(path, "memory.swap.max")
            else:
                _write(os.path.join(path, "memory.limit_in_bytes"), str(self.limit))
                swap = os.path.join(path, "memory.memsw.limit_in_bytes")
            if os.path.exists(swap):  # no swapping past the limit either
                _write(swap, "0" if self.version == "v2" else str(self.limit))
        return os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)

    def describe(self) -> str:
        return (f"memory: cgroup {self.version} memory controller (in {os.path.dirname(self.directory)}), at most "
                f"{self.limit // 2**20} MB per session for all its processes together "
                f"(tmpfs, shared memory and memfd pages included; no swap)")

    def close(self) -> None:
        _remove_tree(self.directory, wait_s=5.0)
