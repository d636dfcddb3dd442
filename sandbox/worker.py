"""The interpreter process: runs user code in a persistent namespace, one cell per request.

Runs after `isolation.drop_privileges`. Its descriptors are fixed by the supervisor:
0 /dev/null, 1 and 2 pipes the supervisor drains (so C code and child processes are
captured too), REQUEST_FD for requests and RESULT_FD for results. User code can reach
both pipes and forge frames on them; the supervisor trusts nothing that arrives there.
"""
from __future__ import annotations

import ast
import builtins
import io
import linecache
import os
import stat
import sys
import threading
import time
import traceback

from . import capture, isolation, protocol
from .protocol import FrameDecoder, FrameError, encode_frame, write_all

REQUEST_FD = 3
RESULT_FD = 4
INPUT_IMAGE = "input_image.jpg"
MAX_ERROR_CHARS = 500
# How long a call's end waits for threads that finished in Python to leave the kernel.
THREAD_EXIT_WAIT_S = 0.5


def _fresh_namespace() -> dict:
    return {"__name__": "__main__", "__builtins__": builtins}


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _print_user_traceback(exc: BaseException, filename: str) -> None:
    """Traceback limited to the user's own frames (the worker's frames mean nothing to it)."""
    frames = traceback.extract_tb(exc.__traceback__)
    first_user = next((i for i, f in enumerate(frames) if f.filename == filename), len(frames))
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames[first_user:])
    lines += traceback.format_exception_only(type(exc), exc)
    sys.stderr.write("".join(lines))


class Interpreter:
    def __init__(self, limits):
        self.namespace = _fresh_namespace()
        self.sink = capture.ImageSink(limits.max_images, limits.max_image_pixels,
                                      limits.max_png_bytes)
        capture.install(self.sink, self.namespace)
        self.cells = 0

    def write_files(self, names, blobs) -> None:
        for name, data in zip(names, blobs):
            _write_seed_file(os.path.join(isolation.SESSION_WORKDIR, name), data)
        if INPUT_IMAGE in names:
            from PIL import Image
            try:
                with Image.open(os.path.join(isolation.SESSION_WORKDIR, INPUT_IMAGE)) as image:
                    image.load()
                    self.namespace["input_image"] = image.copy()
            except Exception as exc:  # a bad image is the caller's problem; say so
                print(f"[input_image not loaded: {_short_error(exc)}]", file=sys.stderr)

    def run_cell(self, code: str):
        """Execute code; return None or a short error string. A trailing expression is shown."""
        self.cells += 1
        filename = f"<cell {self.cells}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename, "exec")
        except (SyntaxError, ValueError) as exc:  # ValueError: null bytes in the source
            sys.stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
            return _short_error(exc)
        trailing = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            trailing = ast.Expression(tree.body.pop().value)
        try:
            exec(compile(tree, filename, "exec"), self.namespace)
            if trailing is not None:
                value = eval(compile(trailing, filename, "eval"), self.namespace)
                if value is not None and not self.sink.add(value):
                    print(repr(value))
        except SystemExit as exc:
            sys.stderr.write(f"[exit({exc.code!r}) called: execution stopped, the session "
                             "and its variables are kept]\n")
            return f"SystemExit: {exc.code!r}"
        except BaseException as exc:  # the user's error is the result, not the worker's
            _print_user_traceback(exc, filename)
            return _short_error(exc)
        return None


def _let_finished_threads_exit() -> None:
    """A joined thread has left Python but can still be in the kernel for a moment; the
    supervisor replaces an interpreter that still has threads when the call ends. When no
    Python thread is left, wait (briefly) for the kernel to catch up. Threads still running
    are the supervisor's to end, so they are not waited for."""
    try:
        if threading.active_count() > 1:
            return
        deadline = time.monotonic() + THREAD_EXIT_WAIT_S
        while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    except Exception:  # user code may have broken threading or /proc; the supervisor decides
        pass


def _write_seed_file(path: str, data: bytes) -> None:
    """Never blocks: whatever user code left under the name that is not a regular file (a
    FIFO whose open would wait for a reader, a socket, a symlink) is replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{os.path.basename(path)!r} is a directory")
        os.unlink(path)
    # O_NONBLOCK: should a FIFO appear after all, the open fails instead of waiting.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o600)
    with open(fd, "wb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{os.path.basename(path)!r} is not a regular file")
        handle.write(data)


def _reopen_std_streams() -> None:
    # Line buffered so output printed before a timeout still reaches the supervisor.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="replace", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="replace", line_buffering=True)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")


def serve(limits) -> None:
    """Request loop; returns only when the supervisor closes the request pipe."""
    _reopen_std_streams()
    interpreter = Interpreter(limits)
    decoder = FrameDecoder(max_header_bytes=protocol.header_limit(limits.max_code_bytes),
                           max_blob_bytes=limits.max_seed_bytes, max_blobs=1024)
    while True:
        data = os.read(REQUEST_FD, 1 << 20)
        if not data:
            return
        try:
            frames = decoder.feed(data)
        except FrameError:
            return
        for header, blobs in frames:
            interpreter.sink.reset()
            error = None
            try:
                interpreter.write_files(header.get("files", []), blobs)
            except OSError as exc:
                error = f"could not write the session files: {_short_error(exc)}"
            if error is None:
                error = interpreter.run_cell(header.get("code", ""))
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # user code may have replaced or closed the stream
                    pass
            _let_finished_threads_exit()
            write_all(RESULT_FD, encode_frame({"op": "done", "seq": header.get("seq"),
                                               "error": error}, interpreter.sink.pngs))
