"""The session supervisor: pid 1 of one session's namespaces, holder of the host channel.

It runs no user code. It forks the interpreter (which joins the session's memory cgroup and
drops to the session's uid), relays requests to it, drains its stdout/stderr with caps,
enforces the wall-clock timeout by killing every process of the session, and sends the host
a result it has validated. When a call returns it kills every other process the call left,
restarts an interpreter the call left with threads running, and stops the interpreter until
the next call: nothing of a session runs between its calls. User code can write anything to
its pipes; at worst its own session is reset.
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import time

from . import isolation, protocol, worker
from .protocol import FrameDecoder, FrameError, encode_frame

READ_CHUNK = 1 << 16


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
        hint = {"SIGSEGV": " (segmentation fault)", "SIGKILL": " (killed; out of memory?)",
                "SIGBUS": " (bus error)", "SIGABRT": " (aborted)"}.get(str(name), "")
        return f"the interpreter was killed by {name}{hint}"
    return f"the interpreter exited with status {os.WEXITSTATUS(status)} (os._exit?)"


def _live(directory: str) -> list:
    """Numeric entries of a /proc directory whose process or thread is not dead or a zombie."""
    found = []
    for entry in os.listdir(directory):
        if entry.isdigit():
            try:
                with open(f"{directory}/{entry}/stat", "rb") as stat:
                    state = stat.read().rpartition(b")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                found.append(int(entry))
    return found


class Interpreter:
    """Handle on the interpreter process and the supervisor's ends of its pipes."""

    def __init__(self, uid: int, limits, cgroup_fd: int):
        ends = [os.pipe() for _ in range(4)]  # request, result, stdout, stderr
        (req_r, req_w), (res_r, res_w), (out_r, out_w), (err_r, err_w) = ends
        pid = os.fork()
        if pid == 0:
            self._become_interpreter([os.open("/dev/null", os.O_RDONLY), out_w, err_w,
                                      req_r, res_w], uid, limits, cgroup_fd)
        for fd in (req_r, res_w, out_w, err_w):
            os.close(fd)
        for fd in (req_w, res_r, out_r, err_r):
            _nonblocking(fd)
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.request, self.result, self.stdout, self.stderr = req_w, res_r, out_r, err_r
        self.exit_status = None
        self.stopped = False   # by the supervisor, between calls
        self.stop_seen = False  # that stop was reported by waitpid
        self.outgoing = bytearray()

    @staticmethod
    def _become_interpreter(fds, uid, limits, cgroup_fd):
        try:
            try:
                isolation.join_memory_cgroup(cgroup_fd)
            except OSError as exc:  # said on stderr, which the next call returns
                os.write(fds[2], f"[the interpreter could not start: cannot join the "
                                 f"session's memory cgroup: {exc}]\n".encode())
                os._exit(1)
            # Lift the five descriptors out of the way, then place them at 0..4.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
            for target, fd in enumerate(high):
                os.dup2(fd, target)
            os.closerange(5, os.sysconf("SC_OPEN_MAX"))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()
            os.chdir(isolation.SESSION_WORKDIR)
            os.environ.clear()
            os.environ.update(isolation.SANDBOX_ENV)
            isolation.drop_privileges(uid, limits)
            worker.serve(limits)
        finally:
            os._exit(0)

    def pipes(self):
        return [fd for fd in (self.result, self.stdout, self.stderr) if fd is not None]

    def close(self) -> None:
        for fd in (self.request, self.result, self.stdout, self.stderr, self.pidfd):
            if fd is not None:
                os.close(fd)
        self.request = self.result = self.stdout = self.stderr = self.pidfd = None


class Supervisor:
    def __init__(self, channel_fd: int, cgroup_fd: int, uid: int, limits):
        self.channel = socket.socket(fileno=channel_fd)
        self.cgroup_fd = cgroup_fd
        self.uid = uid
        self.limits = limits
        self.host_frames = FrameDecoder(
            max_header_bytes=protocol.header_limit(limits.max_code_bytes),
            max_blob_bytes=limits.max_seed_bytes, max_blobs=1024)
        self.seed_files: dict = {}
        self.reseed = False
        self.reset_reason = None   # a fault seen between calls, reported with the next one
        self.call = None           # (seq, deadline) while a call runs
        self.interp = None
        self._new_call_buffers()

    def _new_call_buffers(self):
        self.out = protocol.BoundedStream(self.limits.max_output_bytes)
        self.err = protocol.BoundedStream(self.limits.max_output_bytes)
        self.results = FrameDecoder(max_header_bytes=8192,
                                    max_blob_bytes=self.limits.max_png_bytes,
                                    max_blobs=self.limits.max_images)

    # -- lifecycle ------------------------------------------------------------------------

    def main(self) -> None:
        try:
            isolation.setup_session_mounts(self.uid, self.limits)
            self.interp = Interpreter(self.uid, self.limits, self.cgroup_fd)
        except Exception as exc:
            self._send({"op": "failed", "error": f"session setup failed: {exc}"})
            return
        self._send({"op": "ready"})
        while self._step():
            pass
        self._kill_session_processes()

    def _send(self, header: dict, blobs=()) -> None:
        self.channel.sendall(encode_frame(header, blobs))

    def _kill_session_processes(self) -> None:
        """As pid 1 of the session, kill(-1) reaches every other process in it at once."""
        if self.interp is not None:
            self.interp.close()
            self.interp = None
        while True:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.interp is not None and pid == self.interp.pid:
                self.interp.exit_status = status

    def _restart_interpreter(self) -> None:
        self._kill_session_processes()
        self.interp = Interpreter(self.uid, self.limits, self.cgroup_fd)
        self.reseed = True

    def _kill_strays(self) -> None:
        """Kill every process of the session but this one and the interpreter."""
        keep = (os.getpid(), self.interp.pid)
        while True:
            strays = [pid for pid in _live("/proc") if pid not in keep]
            if not strays:
                return
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap()

    def _settle(self) -> str | None:
        """The call returned: stop the interpreter and end everything else the call started.
        Returns why the interpreter had to be replaced, if it had."""
        interp = self.interp
        # Once the stop is pending the interpreter can create no thread or process (the
        # kernel restarts such a clone after the stop), so the count below is final. The
        # stop itself completes off the critical path (see _resume).
        os.kill(interp.pid, signal.SIGSTOP)
        interp.stopped, interp.stop_seen = True, False
        self._kill_strays()
        if len(os.listdir(f"/proc/{interp.pid}/task")) == 1:
            return None
        # A joined thread can still be on its way out: count the threads left once stopped.
        if not self._wait_stopped():
            return None
        return self._replace_if_threaded()

    def _replace_if_threaded(self) -> str | None:
        """The interpreter is stopped: if threads besides its main one are left, replace it."""
        threads = len(_live(f"/proc/{self.interp.pid}/task")) - 1
        if threads <= 0:
            return None
        self._collect_output()
        self._restart_interpreter()
        return (f"the call left {threads} thread(s) running; they were ended with a fresh "
                f"interpreter: variables were lost, files kept")

    # -- event loop -----------------------------------------------------------------------

    def _step(self) -> bool:
        interp = self.interp
        readable = [self.channel, interp.pidfd, *interp.pipes()]
        writable = [interp.request] if interp.outgoing else []
        timeout = None if self.call is None else max(0.0, self.call[1] - time.monotonic())
        ready, can_write, _ = select.select(readable, writable, [], timeout)
        self._reap()
        if interp.stdout in ready:
            self._drain(interp, "stdout", self.out)
        if interp.stderr in ready:
            self._drain(interp, "stderr", self.err)
        if can_write:
            self._write_request(interp)
        if interp.result in ready:
            self._read_result(interp)
        if interp.pidfd in ready and self.interp is interp:
            self._reap()
            status = interp.exit_status if interp.exit_status is not None else 0
            self._fault(_describe_exit(status))
        if self.call is not None and time.monotonic() >= self.call[1]:
            self._fault(f"TimeoutError: execution exceeded {self.limits.timeout_s:g} s",
                        timed_out=True)
        if self.channel in ready:
            return self._read_host()
        return True

    def _drain(self, interp, name: str, stream) -> None:
        fd = getattr(interp, name)
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            if not data:  # user code closed its end; nothing more will come
                os.close(fd)
                setattr(interp, name, None)
                return
            stream.write(data)

    def _write_request(self, interp) -> None:
        try:
            written = os.write(interp.request, interp.outgoing)
        except BlockingIOError:
            return
        except BrokenPipeError:
            interp.outgoing.clear()
            return
        del interp.outgoing[:written]

    def _read_host(self) -> bool:
        data = self.channel.recv(1 << 20)
        if not data:
            return False
        try:
            frames = self.host_frames.feed(data)
        except FrameError:
            return False
        for header, blobs in frames:
            if header.get("op") != "run" or self.call is not None:
                return False
            self._start_call(header, blobs)
        return True

    def _wait_stopped(self) -> bool:
        """Wait until the interpreter's stop took effect; False if it died instead (its pidfd
        then reports that as a fault)."""
        interp = self.interp
        if not interp.stop_seen:
            try:
                _, status = os.waitpid(interp.pid, os.WUNTRACED)
            except ChildProcessError:  # already reaped
                return False
            if not os.WIFSTOPPED(status):
                interp.exit_status = status
                return False
            interp.stop_seen = True
        return True

    def _resume(self) -> None:
        """Before a call: wait until the stop requested after the last call took effect, drop
        whatever the session wrote until then (it belongs to no call), end what was still
        being created when the stop came (_settle's counts can miss a clone in flight), and
        continue the interpreter."""
        interp = self.interp
        if not self._wait_stopped():
            return  # it died: the pidfd reports that as this call's fault
        self._collect_output()
        self._kill_strays()
        replaced = self._replace_if_threaded()
        if replaced is not None:
            self.reset_reason = replaced
            return
        os.kill(interp.pid, signal.SIGCONT)
        interp.stopped = False

    def _start_call(self, header: dict, blobs) -> None:
        seq = header.get("seq")
        if self.interp.stopped:
            self._resume()
        names = header.get("files", [])
        files = dict(zip(names, blobs))
        self.seed_files.update(files)
        if self.reseed:
            files = {**self.seed_files, **files}
            self.reseed = False
        # Output the session produced between calls belongs to no call; keep it out.
        self._new_call_buffers()
        self.call = (seq, time.monotonic() + self.limits.timeout_s)
        request = {"op": "run", "seq": seq, "code": header.get("code", ""),
                   "files": list(files)}
        self.interp.outgoing += encode_frame(request, list(files.values()))
        self._write_request(self.interp)

    def _read_result(self, interp) -> None:
        try:
            data = os.read(interp.result, READ_CHUNK)
        except BlockingIOError:
            return
        if not data:
            # Usually the interpreter is exiting (os._exit, a crash); say which it was.
            if select.select([interp.pidfd], [], [], 1.0)[0]:
                self._reap()
                self._fault(_describe_exit(interp.exit_status or 0))
            else:
                self._fault("protocol violation: user code closed the result channel")
            return
        if self.call is None:
            self._fault("protocol violation: output on the result channel between calls")
            return
        try:
            frames = self.results.feed(data)
            if not frames:
                return
            if len(frames) > 1 or self.results.pending():
                raise FrameError("more than one result frame")
            header, blobs = frames[0]
            if header.get("op") != "done" or header.get("seq") != self.call[0]:
                raise FrameError("result frame for another call")
            error = protocol.field(header, "error", str, max_len=worker.MAX_ERROR_CHARS + 100)
        except FrameError as exc:
            self._fault(f"protocol violation on the result channel: {exc}")
            return
        replaced = self._settle()
        if replaced is not None:
            self.err.write(f"[{replaced}]\n".encode())
        self._finish(error=error, blobs=blobs, session_reset=replaced is not None)

    def _collect_output(self):
        if self.interp is not None:
            for name, stream in (("stdout", self.out), ("stderr", self.err)):
                if getattr(self.interp, name) is not None:
                    self._drain(self.interp, name, stream)

    def _finish(self, error, blobs=(), timed_out=False, session_reset=False) -> None:
        self._collect_output()
        images, notes = protocol.check_images(blobs, self.limits.max_image_pixels,
                                              self.limits.max_png_bytes)
        stderr = self.err.text() + "".join(n + "\n" for n in notes)
        if self.reset_reason is not None:
            stderr = (f"[the session was reset before this call ({self.reset_reason}); "
                      f"variables were lost, files kept]\n") + stderr
            self.reset_reason, session_reset = None, True
        seq = self.call[0] if self.call else None
        self.call = None
        self._send({"op": "result", "seq": seq, "stdout": self.out.text(), "stderr": stderr,
                    "error": error, "timed_out": timed_out, "session_reset": session_reset},
                   images)

    def _fault(self, reason: str, timed_out: bool = False) -> None:
        """The interpreter timed out, died or misbehaved: kill the session's processes,
        start a fresh interpreter, and report it (now, or with the next call)."""
        self._collect_output()
        self._restart_interpreter()
        if self.call is not None:
            note = f"[{reason}; the session was reset: variables were lost, files kept]\n"
            self.err.write(note.encode())
            self._finish(error=f"{reason} (session reset)", timed_out=timed_out,
                         session_reset=True)
        else:
            self.reset_reason = reason


def run(channel_fd: int, cgroup_fd: int, uid: int, limits_json: str) -> None:
    """Entry point in the forked session process; never returns. cgroup_fd is -1 when the
    pool has no memory cgroups."""
    from .limits import Limits
    status = 0
    try:
        keep = sorted(fd for fd in (channel_fd, cgroup_fd) if fd >= 0)
        low = 3
        for fd in keep:
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        Supervisor(channel_fd, cgroup_fd, uid, Limits.from_json(limits_json)).main()
    except BaseException:
        status = 1
    finally:
        os._exit(status)
