"""Shared helpers for the sandbox tests (imported by name: tests/ is not a package)."""
import os
import time

import pytest

from sandbox import InterpreterPool, IsolationUnavailable, isolation

UID_BASE = 1_900_000_000
MAX_SESSIONS = 32


def available_backends():
    if os.geteuid() != 0:
        return []
    backends = ["namespaces"]
    path = isolation.bwrap_path()
    if path and isolation.bwrap_works(path):
        backends.insert(0, "bwrap")
    return backends


BACKENDS = available_backends()


def make_pool(backend, **options):
    settings = dict(num_workers=2, timeout_s=2.0, memory_mb=512, backend=backend,
                    uid_base=UID_BASE, max_sessions=MAX_SESSIONS)
    settings.update(options)
    try:
        return InterpreterPool(**settings)
    except IsolationUnavailable as exc:
        pytest.skip(str(exc))


def sandbox_uid_processes(uid_base=UID_BASE, count=MAX_SESSIONS):
    """Host pids of live (not zombie) processes running as any session uid of a test pool."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        uid = int(fields.get("Uid", "-1 ").split()[0])
        if uid_base <= uid < uid_base + count and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()


def cpu_ticks(pid):
    """User + system CPU time of a host process, in clock ticks."""
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12])


def process_state(pid):
    """R, S, T (stopped), Z, ... of a host process."""
    return _stat_fields(pid)[0]


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
