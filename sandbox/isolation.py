"""The isolation boundary: which backend to use, the sandbox's filesystem, namespaces, uids,
rlimits.

Layering (outside in):
  zygote sandbox   one per pool: new mount, pid, net, ipc, uts namespaces; a read-only root
                   holding only the allowlisted view of the host (see view.py), built by
                   bubblewrap or by `enter_private_root`.
  session          one per session: its own pid, mount, net (no interfaces up), ipc, uts
                   namespaces and a size-capped tmpfs for its working directory and /tmp.
  interpreter      the process running user code: a per-session memory cgroup, a
                   per-session unprivileged uid, no capabilities, no_new_privs, rlimits,
                   seccomp, only its pipes open; stopped between calls.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess

from . import linux, seccomp, view

SESSION_ROOT = "/session"
SESSION_WORKDIR = "/session/work"
SESSION_TMP = "/session/tmp"
DEVICES = ("null", "zero", "full", "random", "urandom")
ZYGOTE_BOOTSTRAP = (f"import sys; sys.path.append({view.SITE_PACKAGES!r}); "
                    "from sandbox import zygote; zygote.main(sys.argv[1:])")
# The namespace backend starts on the host, from the checkout, and execs the zygote once inside.
LAUNCH_BOOTSTRAP = ("import sys; sys.path.insert(0, {parent!r}); "
                    "from sandbox import isolation; isolation.launch_in_namespaces(sys.argv[1:])")

SESSION_NAMESPACES = (linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWNET
                      | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS)

SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SESSION_WORKDIR,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "MPLBACKEND": "Agg",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "XDG_CACHE_HOME": "/tmp/.cache",
    "OPENBLAS_NUM_THREADS": "1",  # many sessions share the cores; one BLAS thread each
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class IsolationUnavailable(RuntimeError):
    """The requested isolation cannot be achieved on this machine."""


@dataclasses.dataclass(frozen=True)
class IsolationReport:
    backend: str           # "bwrap" or "namespaces"
    level: str             # "strong": every layer above is in place
    guarantees: tuple

    def describe(self) -> str:
        return f"{self.backend} ({self.level}): " + "; ".join(self.guarantees)


# ---------------------------------------------------------------------------------------------
# Host side: choosing a backend and describing the zygote's filesystem.

def _is_privileged() -> bool:
    if os.geteuid() != 0:
        return False
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                needed = (1 << 21) | (1 << 6) | (1 << 7) | (1 << 5)  # SYS_ADMIN SETUID SETGID KILL
                return caps & needed == needed
    return False


def bwrap_path():
    return shutil.which("bwrap")


def bwrap_works(path: str) -> bool:
    probe = [path, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--proc", "/proc",
             "--dev", "/dev", "/bin/true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose_backend(requested: str) -> str:
    """'auto' prefers bubblewrap, then raw namespaces; refuses when neither can work."""
    if requested not in ("auto", "bwrap", "namespaces"):
        raise ValueError(f"backend must be 'auto', 'bwrap' or 'namespaces', got {requested!r}")
    if not _is_privileged():
        raise IsolationUnavailable(
            "the sandbox needs root (CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID, CAP_KILL) to give "
            "every session its own namespaces and unprivileged uid; run the pool as root "
            "(e.g. in the training container)")
    path = bwrap_path()
    if requested in ("auto", "bwrap") and path and bwrap_works(path):
        return "bwrap"
    if requested == "bwrap":
        raise IsolationUnavailable("backend='bwrap' requested but bubblewrap is not installed "
                                   "or cannot create namespaces here (try `make sandbox-deps`)")
    return "namespaces"


def report(backend: str, limits, files: view.View, memory: str) -> IsolationReport:
    return IsolationReport(backend=backend, level="strong", guarantees=(
        "network: each session in a new network namespace with no interface up "
        "(host loopback unreachable)",
        files.describe(),
        f"writes: only the session's tmpfs (cwd and /tmp, {limits.disk_mb} MB, "
        f"files up to {limits.max_file_mb} MB)",
        memory,
        "processes: pid namespace per session, killed as a whole on timeout or close",
        "between calls: processes a call started are killed when it returns; a call that "
        "leaves threads running gets a fresh interpreter (variables lost, files kept); the "
        "interpreter is stopped (SIGSTOP) until the next call, so a session uses no CPU and "
        "produces nothing between calls",
        "identity: per-session unprivileged uid, no capabilities, no_new_privs, "
        "clean environment, no inherited descriptors",
        f"rlimits: {limits.max_processes} processes, {limits.max_open_files} open files, "
        f"+{limits.memory_mb} MB address space per process, no core dumps",
        "seccomp: " + seccomp.describe() if seccomp.supported()
        else "seccomp: not available on this CPU (socket families, SysV IPC and memfd allowed)",
    ))


def filesystem_plan(files: view.View) -> list:
    """Ordered mount actions building the zygote's root; both backends execute this list."""
    return list(files.plan) + [("dev", None, "/dev"), ("proc", None, "/proc"),
                               ("dir", "0755", SESSION_ROOT)]


def bwrap_argv(path: str, plan) -> list:
    argv = [path, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    read_only = ["/"]
    for action, argument, target in plan:
        if action == "ro-bind":
            argv += ["--ro-bind", argument, target]
        elif action == "symlink":
            argv += ["--symlink", argument, target]
        elif action in ("dir", "tmpfs"):
            argv += ["--perms", argument, "--" + action, target]
            if action == "tmpfs" and target != "/tmp":
                read_only.append(target)
        else:
            argv += ["--" + action, target]
    for target in read_only:
        argv += ["--remount-ro", target]
    return argv + ["--chdir", "/"]


def launch_in_namespaces(argv) -> None:
    """Namespace backend, on the host: enter new namespaces, build the view as their root and
    exec the zygote there. argv: plan JSON, interpreter, then the zygote's own arguments."""
    plan, python, zygote_args = json.loads(argv[0]), argv[1], argv[2:]
    linux.unshare(SESSION_NAMESPACES)  # the zygote's sandbox has the same set as a session
    child = os.fork()
    if child != 0:  # stays on the host only to mirror the zygote's exit
        os.close(int(zygote_args[0]))  # the control socket is the zygote's alone
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        enter_private_root(plan)
        os.execve(python, [python, "-I", "-c", ZYGOTE_BOOTSTRAP, *zygote_args], SANDBOX_ENV)
    finally:
        os._exit(1)


# ---------------------------------------------------------------------------------------------
# Namespace backend: build the same root by hand (runs as pid 1 of fresh namespaces).

def _mount_point(path: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "w").close()


def _bind_readonly(source: str, target: str) -> None:
    _mount_point(target, os.path.isdir(source))
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
                | linux.MS_NOSUID | linux.MS_NODEV)


def _staging_dir(plan) -> str:
    sources = [source for action, source, _ in plan if action == "ro-bind"]
    for candidate in ("/mnt", "/media", "/srv", "/run", "/var/tmp", "/tmp"):
        if os.path.isdir(candidate) and not any(
                s == candidate or s.startswith(candidate + "/") for s in sources):
            return candidate
    raise IsolationUnavailable("no directory to stage the sandbox root in")


def enter_private_root(plan) -> None:
    """Replace this mount namespace's root by the plan's minimal read-only root."""
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    new_root = _staging_dir(plan)
    linux.mount("sandbox-root", new_root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                "mode=0755,size=16m")
    for action, argument, target in plan:
        dest = new_root + target
        if action == "ro-bind":
            _bind_readonly(argument, dest)
        elif action == "symlink":
            os.symlink(argument, dest)
        elif action == "dir":
            os.makedirs(dest, exist_ok=True)
            os.chmod(dest, int(argument, 8))
        elif action == "tmpfs":
            os.makedirs(dest, exist_ok=True)
            flags = linux.MS_NOSUID | linux.MS_NODEV
            linux.mount("tmpfs", dest, "tmpfs", flags, f"mode={argument},size=16m")
            if target != "/tmp":  # an empty directory hiding what the bind below it holds
                linux.mount(None, dest, None, linux.MS_REMOUNT | linux.MS_RDONLY | flags)
        elif action == "proc":
            os.makedirs(dest, exist_ok=True)
            linux.mount("proc", dest, "proc",
                        linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        elif action == "dev":
            os.makedirs(dest, exist_ok=True)
            linux.mount("tmpfs", dest, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755")
            for device in DEVICES:
                node = f"{dest}/{device}"
                open(node, "w").close()
                linux.mount(f"/dev/{device}", node, None, linux.MS_BIND)
    old_root = new_root + "/.old_root"
    os.mkdir(old_root)
    linux.pivot_root(new_root, old_root)
    os.chdir("/")
    linux.umount("/.old_root", linux.MNT_DETACH)
    os.rmdir("/.old_root")
    linux.mount(None, "/", None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
                | linux.MS_NOSUID | linux.MS_NODEV)
    linux.sethostname("sandbox")


# ---------------------------------------------------------------------------------------------
# Inside the zygote sandbox: per-session namespaces and the interpreter's confinement.

def setup_session_mounts(uid: int, limits) -> None:
    """In the session supervisor (pid 1 of the session's namespaces)."""
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    linux.mount("session", SESSION_ROOT, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                f"mode=0755,size={limits.disk_mb}m,nr_inodes=16384")
    for path in (SESSION_WORKDIR, SESSION_TMP):
        os.mkdir(path, 0o700)
        os.chown(path, uid, uid)
    _bind_session_tmp()
    # A proc of the session's own pid namespace: user code sees only its own processes.
    linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    linux.sethostname("sandbox")


def _mounts_below(directory: str) -> list:
    """Top-most mount points strictly below `directory` in this mount namespace."""
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")  # octal escapes
            if point.startswith(directory + "/"):
                points.append(point)
    return [p for p in points if not any(p.startswith(q + "/") for q in points)]


def _bind_session_tmp() -> None:
    """Puts the session's own tmp at /tmp. Parts of the view that live below /tmp (a Python
    install there) would be hidden by it, so they are carried over: bound to a stash first,
    re-bound read-only at their path inside the new /tmp, and the stash detached."""
    hidden = _mounts_below("/tmp")
    stashes = []
    for i, point in enumerate(hidden):
        stash = os.path.join(SESSION_ROOT, f".view{i}")
        if os.path.isdir(point):
            os.mkdir(stash, 0o700)
        else:
            open(stash, "w").close()
        linux.mount(point, stash, None, linux.MS_BIND | linux.MS_REC)
        stashes.append(stash)
    linux.mount(SESSION_TMP, "/tmp", None, linux.MS_BIND)
    for point, stash in zip(hidden, stashes):
        _bind_readonly(stash, point)
        linux.umount(stash, linux.MNT_DETACH)
        if os.path.isdir(stash):
            os.rmdir(stash)
        else:
            os.remove(stash)


def join_memory_cgroup(procs_fd: int) -> None:
    """In the interpreter, before user code: move into the session's memory cgroup (so its
    children follow), then hide the host's cgroup paths behind a new cgroup namespace."""
    if procs_fd >= 0:
        os.write(procs_fd, b"0")  # "0" is the writer, whatever its pid namespace
        os.close(procs_fd)
    linux.unshare(linux.CLONE_NEWCGROUP)


def address_space_in_use() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def drop_privileges(uid: int, limits) -> None:
    """In the interpreter, before any user code: rlimits, then the uid, then no_new_privs."""
    mb = 1024 * 1024
    address_space = address_space_in_use() + limits.memory_mb * mb
    for which, value in ((resource.RLIMIT_AS, address_space),
                         (resource.RLIMIT_DATA, address_space),
                         (resource.RLIMIT_NPROC, limits.max_processes),
                         (resource.RLIMIT_NOFILE, limits.max_open_files),
                         (resource.RLIMIT_FSIZE, limits.max_file_mb * mb),
                         (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_MEMLOCK, 0),
                         (resource.RLIMIT_MSGQUEUE, 0)):
        resource.setrlimit(which, (value, value))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # clears every capability: all uids are now non-zero
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    linux.prctl(linux.PR_SET_DUMPABLE, 1)  # so the process may read its own /proc entries
    if seccomp.supported():
        seccomp.install()
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("uid drop did not take effect")
