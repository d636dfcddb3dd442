"""Host side: InterpreterPool runs code for many sessions in the sandboxed zygote's children.

Each session is its own process tree (supervisor + interpreter) forked from a warm zygote,
so its variables and files persist across calls while `num_workers` bounds how many calls
run at once. Everything that comes back from a session is validated here again; the host
never unpickles or evaluates it. A session that stops answering is killed from outside
(its whole pid namespace) and transparently restarted with its seed files on the next call.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from . import isolation, protocol, view
from .cgroups import MemoryCgroups
from .limits import Limits
from .protocol import FrameDecoder, FrameError, encode_frame

MAX_NAME_BYTES = 255
_SURROGATES = re.compile("[\ud800-\udfff]")


def _clean(text):
    """Text any tokenizer can encode: lone surrogates (from user exception messages) become
    U+FFFD."""
    return text if text is None else _SURROGATES.sub("\ufffd", text)


class SandboxError(RuntimeError):
    """The pool itself failed (could not start, or was closed)."""


@dataclasses.dataclass
class ExecResult:
    stdout: str = ""
    stderr: str = ""
    images: list = dataclasses.field(default_factory=list)  # PNG bytes
    error: str | None = None
    timed_out: bool = False
    session_reset: bool = False   # variables were lost (fault, eviction or restart)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


class _Zygote:
    """The pool's sandbox: one warm process that forks sessions on request."""

    def __init__(self, backend: str, limits: Limits, files: view.View, start_timeout_s: float,
                 debug: bool):
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        arguments = [str(child_end.fileno()), limits.to_json(), json.dumps(files.packages)]
        plan = isolation.filesystem_plan(files)
        if backend == "bwrap":
            command = (isolation.bwrap_argv(isolation.bwrap_path(), plan)
                       + [files.python, "-I", "-c", isolation.ZYGOTE_BOOTSTRAP, *arguments])
        else:
            bootstrap = isolation.LAUNCH_BOOTSTRAP.format(
                parent=os.path.dirname(view.PACKAGE_DIR))
            command = [sys.executable, "-I", "-c", bootstrap, json.dumps(plan), files.python,
                       *arguments]
        self.process = subprocess.Popen(
            command, pass_fds=[child_end.fileno()], env=dict(isolation.SANDBOX_ENV), cwd="/",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=None if debug else subprocess.DEVNULL, start_new_session=True)
        child_end.close()
        self.control = host_end
        self.lock = threading.Lock()
        try:
            ready = self._receive(start_timeout_s)
        except SandboxError:
            self.close()
            raise
        if ready.get("op") != "ready":
            self.close()
            raise SandboxError(f"the sandbox zygote did not start: {ready!r}")

    def _receive(self, timeout: float) -> dict:
        self.control.settimeout(timeout)
        try:
            message = self.control.recv(65536)
        except (socket.timeout, OSError) as exc:
            raise SandboxError(f"the sandbox zygote did not answer: {exc}") from None
        if not message:
            code = self.process.poll()
            raise SandboxError(f"the sandbox zygote exited (status {code}); "
                               "run with debug=True to see its stderr")
        try:
            reply = protocol.json_object(message)
        except FrameError as exc:
            raise SandboxError(f"the sandbox zygote sent garbage: {exc}") from None
        return reply

    def request(self, message: dict, fds=()) -> dict:
        with self.lock:
            try:
                socket.send_fds(self.control, [protocol.json_bytes(message)], list(fds))
            except OSError as exc:
                raise SandboxError(f"the sandbox zygote is gone: {exc}") from None
            return self._receive(30.0)

    def spawn(self, uid: int, cgroup_fd: int | None):
        host_end, session_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [session_end.fileno()] + ([] if cgroup_fd is None else [cgroup_fd])
        try:
            reply = self.request({"op": "spawn", "uid": uid}, fds)
        finally:
            session_end.close()
        pid = reply.get("pid")
        if not reply.get("ok") or type(pid) is not int:
            host_end.close()
            raise SandboxError(f"could not start a session: {reply.get('error', reply)!r}")
        return pid, host_end

    def kill(self, pid: int) -> None:
        try:
            self.request({"op": "kill", "pid": pid})
        except SandboxError:
            # The zygote is gone, and with it every session it started.
            pass

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        # Closing the control socket makes the zygote kill its sessions and exit; the
        # sandbox's pid 1 then exits only once every process in its namespace is gone.
        self.control.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:  # the process group holds the sandbox's pid 1; its death ends the rest
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


class _Session:
    def __init__(self, session_id):
        self.session_id = session_id
        self.lock = threading.Lock()
        self.pid = None
        self.uid = None
        self.sock = None
        self.decoder = None
        self.seq = 0
        self.seed_files: dict = {}
        self.send_seed = False
        self.reset_reason = None    # why the process was lost between calls
        self.last_used = time.monotonic()
        self.queue: collections.deque = collections.deque()  # (code, files, future), FIFO
        self.scheduled = False      # a drain task for this session is queued or running
        self.closed = False


class InterpreterPool:
    """Sandboxed, stateful Python interpreters for model-written code.

    num_workers bounds concurrent executions; sessions beyond max_sessions evict the least
    recently used idle one (its next call reports session_reset). backend is 'auto',
    'bwrap' or 'namespaces'; the pool refuses to start when strong isolation is not
    achievable. packages are the import names snippets may use (with what they require);
    nothing else installed is visible to them. memory_mb bounds each session as a whole
    where the machine has a writable memory cgroup, and each process's address space always.
    Further keyword arguments override fields of `Limits`.
    """

    def __init__(self, num_workers: int = 4, timeout_s: float = 15.0, memory_mb: int = 1024,
                 *, backend: str = "auto", packages=view.DEFAULT_PACKAGES,
                 max_sessions: int | None = None, uid_base: int = 2_000_000_000,
                 start_timeout_s: float = 120.0, debug: bool = False, **limits):
        if type(num_workers) is not int or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        unknown = set(limits) - {f.name for f in dataclasses.fields(Limits)}
        if unknown:
            raise TypeError(f"unknown InterpreterPool options: {sorted(unknown)}")
        self.limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb, **limits)
        self.max_sessions = max_sessions if max_sessions is not None else max(64, 4 * num_workers)
        if type(self.max_sessions) is not int or self.max_sessions <= num_workers:
            raise ValueError("max_sessions must be an int greater than num_workers")
        if type(uid_base) is not int or not 1000 <= uid_base <= 2**32 - 2 - self.max_sessions:
            raise ValueError(f"uid_base {uid_base!r} leaves no room for max_sessions uids")
        if (isinstance(packages, str) or not all(isinstance(p, str) and p.isidentifier()
                                                  for p in packages)):
            raise TypeError(f"packages must be a list of import names, got {packages!r}")
        self.num_workers = num_workers
        self.backend = isolation.choose_backend(backend)
        self.view = view.build(tuple(packages))
        self._cgroups = MemoryCgroups.create(self.limits.memory_mb)
        memory = (self._cgroups.describe() if self._cgroups is not None else
                  f"memory: no writable memory cgroup here, so only each process's address "
                  f"space is bounded (+{self.limits.memory_mb} MB)")
        self.isolation = isolation.report(self.backend, self.limits, self.view, memory)
        self._start_timeout_s = start_timeout_s
        self._debug = debug
        self._closed = False
        self._lock = threading.Lock()      # sessions map, uids, zygote replacement
        self._sessions: collections.OrderedDict = collections.OrderedDict()
        self._free_uids = list(range(uid_base + self.max_sessions - 1, uid_base - 1, -1))
        try:
            self._zygote = self._new_zygote()
        except BaseException:
            self._close_cgroups()
            raise
        self._executor = concurrent.futures.ThreadPoolExecutor(
            num_workers, thread_name_prefix="sandbox-call")

    # -- public API -------------------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def execute(self, session_id, code: str, files: dict | None = None) -> ExecResult:
        return self.submit(session_id, code, files).result()

    def submit(self, session_id, code: str, files: dict | None = None) -> concurrent.futures.Future:
        self._check_call(session_id, code, files)
        if self._closed:
            raise SandboxError("the pool is closed")
        files = {name: bytes(data) for name, data in (files or {}).items()}
        future = concurrent.futures.Future()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                session = self._sessions[session_id] = _Session(session_id)
            self._sessions.move_to_end(session_id)
            session.queue.append((code, files, future))
            if not session.scheduled:
                session.scheduled = True
                self._executor.submit(self._drain, session)
        return future

    def close_session(self, session_id) -> None:
        """Kill the session's processes; calls still queued for it are cancelled."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is None:
                return
            session.closed = True
            pending = list(session.queue)
            session.queue.clear()
        for _, _, future in pending:
            future.cancel()
        with session.lock:
            self._stop(session)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.closed = True
            if session.sock is not None:
                session.sock.close()   # wakes any call blocked on it
        self._zygote.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._close_cgroups()
        for session in sessions:
            for _, _, future in session.queue:
                future.cancel()

    @property
    def active_sessions(self) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.pid is not None)

    def _new_zygote(self) -> _Zygote:
        return _Zygote(self.backend, self.limits, self.view, self._start_timeout_s, self._debug)

    def _close_cgroups(self) -> None:
        if self._cgroups is not None:
            self._cgroups.close()

    # -- validation ---------------------------------------------------------------------------

    def _check_call(self, session_id, code, files) -> None:
        if isinstance(session_id, bool) or not isinstance(session_id, (str, int)):
            raise TypeError(f"session_id must be a str or int, got {type(session_id).__name__}")
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        try:
            size = len(code.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ValueError(f"code is not valid UTF-8 text: {exc.reason} at character "
                             f"{exc.start}") from None
        if size > self.limits.max_code_bytes:
            raise ValueError(f"code is longer than {self.limits.max_code_bytes} bytes")
        if files is None:
            return
        if not isinstance(files, dict):
            raise TypeError("files must be a dict of name -> bytes")
        total = 0
        for name, data in files.items():
            if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name
                    or "\0" in name or _SURROGATES.search(name)
                    or len(name.encode()) > MAX_NAME_BYTES):
                raise ValueError(f"file name {name!r} must be a plain file name (no '/')")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"files[{name!r}] must be bytes, got {type(data).__name__}")
            total += len(data)
        if total > self.limits.max_seed_bytes:
            raise ValueError(f"files total {total} bytes, over {self.limits.max_seed_bytes}")

    # -- sessions -----------------------------------------------------------------------------

    def _evict_one(self) -> None:
        """Stop the least recently used idle session's process (it restarts on next use)."""
        with self._lock:
            candidates = [s for s in self._sessions.values() if s.pid is not None]
        for session in candidates:
            if session.lock.acquire(blocking=False):
                try:
                    self._stop(session, "evicted: more than max_sessions live sessions")
                finally:
                    session.lock.release()
                return

    def _ensure_zygote(self) -> None:
        with self._lock:
            if self._zygote.alive() or self._closed:
                return
            self._zygote.close()
            for session in self._sessions.values():
                if session.pid is not None:
                    session.reset_reason = "the sandbox was restarted"
            self._zygote = self._new_zygote()

    def _start(self, session: _Session) -> None:
        self._ensure_zygote()
        with self._lock:
            live = sum(1 for s in self._sessions.values() if s.pid is not None)
        if live >= self.max_sessions or not self._free_uids:
            self._evict_one()
        with self._lock:
            if not self._free_uids:
                raise SandboxError("no free session uid (too many sessions busy at once)")
            uid = self._free_uids.pop()
        cgroup_fd = None
        try:
            if self._cgroups is not None:
                cgroup_fd = self._cgroups.session_procs(uid)
            pid, sock = self._zygote.spawn(uid, cgroup_fd)
        except BaseException:
            with self._lock:
                self._free_uids.append(uid)
            raise
        finally:
            if cgroup_fd is not None:
                os.close(cgroup_fd)
        session.pid, session.uid, session.sock = pid, uid, sock
        session.decoder = FrameDecoder(
            max_header_bytes=protocol.header_limit(2 * self.limits.max_output_bytes),
            max_blob_bytes=self.limits.max_png_bytes, max_blobs=self.limits.max_images)
        session.send_seed = bool(session.seed_files)
        ready = self._receive(session, time.monotonic() + self._start_timeout_s)
        if ready.get("op") != "ready":
            reason = ready.get("error") if isinstance(ready.get("error"), str) else ready
            self._stop(session)
            raise SandboxError(f"session setup failed: {reason!r}")

    def _stop(self, session: _Session, reason: str | None = None) -> None:
        """Kill the session's process tree from outside and release its uid."""
        if session.pid is None:
            return
        session.sock.close()
        self._zygote.kill(session.pid)
        with self._lock:
            self._free_uids.append(session.uid)
        session.pid = session.uid = session.sock = session.decoder = None
        session.reset_reason = reason

    def _receive(self, session: _Session, deadline: float) -> dict:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            session.sock.settimeout(remaining)
            data = session.sock.recv(1 << 20)
            if not data:
                raise EOFError
            frames = session.decoder.feed(data)
            if len(frames) > 1:
                raise FrameError("more than one frame for one request")
            if frames:
                header, blobs = frames[0]
                return dict(header, _blobs=blobs)

    # -- one call -----------------------------------------------------------------------------

    def _drain(self, session: _Session) -> None:
        """Run the session's oldest queued call, then queue the session again behind the
        other sessions' work: calls of one session run in order, sessions share workers."""
        with self._lock:
            if not session.queue:
                session.scheduled = False
                return
            code, files, future = session.queue.popleft()
        if future.set_running_or_notify_cancel():
            try:
                started = time.monotonic()
                with session.lock:
                    session.last_used = started
                    result = self._run(session, code, files)
                result.duration_s = time.monotonic() - started
                future.set_result(result)
            except BaseException as exc:  # surfaces through the future, as submit() promises
                future.set_exception(exc)
        with self._lock:
            if session.queue and not self._closed:
                self._executor.submit(self._drain, session)
            else:
                session.scheduled = False

    def _run(self, session: _Session, code: str, files: dict) -> ExecResult:
        if self._closed or session.closed:
            return ExecResult(error="SandboxError: the session or pool was closed",
                              session_reset=True)
        if session.pid is not None and not self._zygote.alive():
            # Its processes die with the sandbox (asynchronously): never talk to them again.
            self._stop(session, "the sandbox was restarted")
        reset_note = None
        if session.reset_reason is not None:
            reset_note, session.reset_reason = session.reset_reason, None
        session.seed_files.update(files)
        if session.pid is None:
            self._start(session)
        if session.send_seed:
            files, session.send_seed = {**session.seed_files, **files}, False
        session.seq += 1
        request = {"op": "run", "seq": session.seq, "code": code, "files": list(files)}
        grace = 3.0 + 0.5 * self.limits.timeout_s
        deadline = time.monotonic() + self.limits.timeout_s + grace
        try:
            session.sock.sendall(encode_frame(request, list(files.values())))
            reply = self._receive(session, deadline)
            result = self._parse_result(reply, session.seq)
        except TimeoutError:
            self._stop(session)
            result = ExecResult(error=f"TimeoutError: no answer within "
                                      f"{self.limits.timeout_s + grace:g} s; session killed",
                                timed_out=True, session_reset=True)
        except (EOFError, OSError, FrameError) as exc:
            self._stop(session)
            if self._closed:
                return ExecResult(error="SandboxError: the pool was closed", session_reset=True)
            detail = "the session process died" if isinstance(exc, EOFError) else str(exc)
            result = ExecResult(error=f"SandboxError: {detail}; session restarted",
                                session_reset=True)
        if reset_note is not None:
            result.stderr = (f"[the session was reset before this call ({reset_note}); "
                             f"variables were lost, files kept]\n") + result.stderr
            result.session_reset = True
        return result

    def _parse_result(self, reply: dict, seq: int) -> ExecResult:
        """Type- and size-check everything; a session can only ever produce an ExecResult."""
        if reply.get("op") != "result" or reply.get("seq") != seq:
            raise FrameError("unexpected frame from the session")
        text_cap = 4 * self.limits.max_output_bytes + 4096
        images, notes = protocol.check_images(reply["_blobs"], self.limits.max_image_pixels,
                                              self.limits.max_png_bytes)
        return ExecResult(
            stdout=_clean(protocol.field(reply, "stdout", str, "", max_len=text_cap)),
            stderr=_clean(protocol.field(reply, "stderr", str, "", max_len=text_cap)
                          + "".join(n + "\n" for n in notes)),
            images=images,
            error=_clean(protocol.field(reply, "error", str, max_len=2048)),
            timed_out=protocol.field(reply, "timed_out", bool, False),
            session_reset=protocol.field(reply, "session_reset", bool, False))
