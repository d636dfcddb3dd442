"""The zygote: a warm interpreter inside the pool's sandbox that forks one process tree per
session.

It imports the packages snippets may use once, renders one figure to warm the font and PNG
machinery, then serves two requests from the host over a SOCK_SEQPACKET control socket:
`spawn` (with the session's channel socket, and its memory cgroup's cgroup.procs when there
is one, passed as SCM_RIGHTS) and `kill`. It runs no user code, and no process running user
code holds the control socket.
"""
from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import sys

from . import isolation, linux, supervisor

MAX_CONTROL_MESSAGE = 65536
STDLIB_PRELOAD = ("base64", "bisect", "collections", "copy", "csv", "dataclasses", "datetime",
                  "decimal", "fractions", "functools", "hashlib", "heapq", "itertools", "json",
                  "math", "operator", "pathlib", "random", "re", "statistics", "string",
                  "struct", "subprocess", "textwrap", "time", "typing")


def preload(packages) -> None:
    import io

    for name in STDLIB_PRELOAD + tuple(packages):
        importlib.import_module(name)
    from PIL import Image

    Image.init()  # load every image plugin now rather than on the first Image.open
    if "cv2" in packages:
        sys.modules["cv2"].setNumThreads(1)
    if "matplotlib" in packages:
        matplotlib = sys.modules["matplotlib"]
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=(2, 2))
        plt.plot([0, 1], [0, 1])
        plt.title("warm-up")
        figure.savefig(io.BytesIO(), format="png", dpi=150, bbox_inches="tight")
        plt.close(figure)


def _reap(live: set) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        live.discard(pid)


def _spawn(channel_fd: int, cgroup_fd: int, uid: int, limits_json: str,
           control: socket.socket) -> int:
    """Fork a session: a short-lived child enters new namespaces and forks the supervisor,
    which becomes pid 1 there; its pid (as seen here) comes back through a pipe."""
    read_end, write_end = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        try:
            os.close(read_end)
            control.close()
            linux.unshare(isolation.SESSION_NAMESPACES)
            session_pid = os.fork()
            if session_pid == 0:
                os.close(write_end)
                supervisor.run(channel_fd, cgroup_fd, uid, limits_json)
            os.write(write_end, str(session_pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = os.read(read_end, 32)
    os.close(read_end)
    os.waitpid(intermediate, 0)
    if not data.isdigit():
        raise RuntimeError("could not create the session's namespaces")
    return int(data)


def _handle(request: dict, fds: list, live: set, limits_json: str, control) -> dict:
    op = request.get("op")
    if op == "spawn":
        uid = request.get("uid")
        if len(fds) not in (1, 2) or type(uid) is not int or uid <= 0:
            return {"ok": False, "error": "spawn needs a channel fd, at most one cgroup fd "
                                          "and a positive uid"}
        pid = _spawn(fds[0], fds[1] if len(fds) == 2 else -1, uid, limits_json, control)
        live.add(pid)
        return {"ok": True, "pid": pid}
    if op == "kill":
        pid = request.get("pid")
        if pid in live:  # never signal a pid that may have been reused
            os.kill(pid, signal.SIGKILL)
        return {"ok": True}
    return {"ok": False, "error": f"unknown op {op!r}"}


def serve(control_fd: int, limits_json: str, packages) -> None:
    preload(packages)
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    control = socket.socket(fileno=control_fd)
    live: set = set()
    control.send(json.dumps({"op": "ready"}).encode())
    while True:
        _reap(live)
        if not select.select([control], [], [], 1.0)[0]:
            continue
        message, fds, _, _ = socket.recv_fds(control, MAX_CONTROL_MESSAGE, 4)
        if not message:
            break
        try:
            reply = _handle(json.loads(message), fds, live, limits_json, control)
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        control.send(json.dumps(reply).encode())
    for pid in live:
        os.kill(pid, signal.SIGKILL)


def main(argv) -> None:
    """Inside the view (both backends). argv: control fd, limits JSON, packages JSON."""
    control_fd, limits_json, packages = int(argv[0]), argv[1], json.loads(argv[2])
    os.environ.clear()
    os.environ.update(isolation.SANDBOX_ENV)
    os.makedirs(isolation.SANDBOX_ENV["MPLCONFIGDIR"], exist_ok=True)
    try:
        serve(control_fd, limits_json, packages)
    finally:
        sys.stdout.flush()
        os._exit(0)
