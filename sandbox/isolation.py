"""The isolation boundary: which backend to use, the sandbox's filesystem, namespaces, uids,
rlimits.

Layering (outside in):
  zygote sandbox   one per pool: new mount, pid, net, ipc, uts namespaces; a minimal
                   read-only root holding only the system libraries, the Python install
                   and this package (built by bubblewrap, or by `enter_private_root`).
  session          one per session: its own pid, mount, net (no interfaces up), ipc, uts
                   namespaces and a size-capped tmpfs for its working directory and /tmp.
  interpreter      the process running user code: a per-session unprivileged uid, no
                   capabilities, no_new_privs, rlimits, only its pipes open.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import subprocess
import sys

from . import linux, seccomp

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
SESSION_ROOT = "/session"
SESSION_WORKDIR = "/session/work"
SESSION_TMP = "/session/tmp"

# /etc entries the interpreter needs; everything else there (shadow, ssh keys, ...) stays out.
ETC_ALLOWLIST = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "fonts",
                 "mime.types", "nsswitch.conf", "host.conf")
DEVICES = ("null", "zero", "full", "random", "urandom")
TOP_LEVEL_LINKS = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")

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


def report(backend: str, limits) -> IsolationReport:
    return IsolationReport(backend=backend, level="strong", guarantees=(
        "network: each session in a new network namespace with no interface up "
        "(host loopback unreachable)",
        "filesystem: read-only minimal root with only system libraries, the Python install "
        "and the sandbox package; host home, project files and secrets absent",
        f"writes: only the session's tmpfs (cwd and /tmp, {limits.disk_mb} MB, "
        f"files up to {limits.max_file_mb} MB)",
        "processes: pid namespace per session, killed as a whole on timeout or close",
        "identity: per-session unprivileged uid, no capabilities, no_new_privs, "
        "clean environment, no inherited descriptors",
        f"rlimits: {limits.max_processes} processes, {limits.max_open_files} open files, "
        f"+{limits.memory_mb} MB address space, no core dumps",
        "seccomp: namespace creation, mount, ptrace, bpf, keyrings, io_uring and module "
        "syscalls denied" if seccomp.supported() else "seccomp: not available on this CPU",
    ))


def python_roots() -> list:
    """Directories the sandboxed interpreter needs from the host (venv and base install)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))), PACKAGE_DIR}
    roots = sorted(os.path.realpath(r) for r in roots)
    kept = []
    for root in roots:  # drop nested duplicates and what the /usr bind already covers
        if root == "/usr" or root.startswith("/usr/"):
            continue
        if any(root == k or root.startswith(k + "/") for k in kept):
            continue
        kept.append(root)
    return kept


def filesystem_plan() -> list:
    """Ordered mount actions building the zygote's root; both backends execute this list."""
    plan = [("ro-bind", "/usr", "/usr")]
    for name in TOP_LEVEL_LINKS:
        path = "/" + name
        if os.path.islink(path):
            plan.append(("symlink", os.readlink(path), path))
        elif os.path.isdir(path):
            plan.append(("ro-bind", path, path))
    for name in ETC_ALLOWLIST:
        path = "/etc/" + name
        if os.path.exists(path):
            plan.append(("ro-bind", os.path.realpath(path), path))
    # /tmp first, so interpreter roots that live below it (a checkout in /tmp) are bound on top.
    plan.append(("tmpfs", None, "/tmp"))
    roots = python_roots()
    # Parents of the binds are created traversable but not listable, whatever their mode
    # on the host (/root is 0700 there, and the base Python may live below it).
    parents = sorted({root[:i] for root in roots for i in range(1, len(root)) if root[i] == "/"},
                     key=lambda path: path.count("/"))
    plan += [("dir", None, parent) for parent in parents if not parent.startswith("/usr")]
    plan += [("ro-bind", root, root) for root in roots]
    plan += [("dev", None, "/dev"), ("proc", None, "/proc"), ("dir", None, SESSION_ROOT)]
    return plan



def bwrap_argv(path: str) -> list:
    argv = [path, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--hostname", "sandbox"]
    for action, source, target in filesystem_plan():
        if action == "ro-bind":
            argv += ["--ro-bind", source, target]
        elif action == "symlink":
            argv += ["--symlink", source, target]
        elif action == "dir":
            argv += ["--perms", "0711", "--dir", target]
        else:
            argv += ["--" + action, target]
    return argv + ["--remount-ro", "/", "--chdir", "/"]


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
    sources = [s for action, s, _ in plan if action == "ro-bind"]
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
    for action, source, target in plan:
        dest = new_root + target
        if action == "ro-bind":
            _bind_readonly(source, dest)
        elif action == "symlink":
            os.symlink(source, dest)
        elif action == "dir":
            os.makedirs(dest, exist_ok=True)
            os.chmod(dest, 0o711)
        elif action == "tmpfs":
            os.makedirs(dest, exist_ok=True)
            linux.mount("tmpfs", dest, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777")
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


def _bind_session_tmp() -> None:
    """Puts the session's own tmp at /tmp. Interpreter roots that live below /tmp (a checkout in
    /tmp) would be hidden by it, so they are carried over: bound to a stash first, re-bound
    read-only at their path inside the new /tmp, and the stash detached."""
    hidden = [root for root in python_roots() if root == "/tmp" or root.startswith("/tmp/")]
    stashes = []
    for i, root in enumerate(hidden):
        stash = os.path.join(SESSION_ROOT, f".root{i}")
        os.mkdir(stash, 0o700)
        linux.mount(root, stash, None, linux.MS_BIND | linux.MS_REC)
        stashes.append(stash)
    linux.mount(SESSION_TMP, "/tmp", None, linux.MS_BIND)
    for root, stash in zip(hidden, stashes):
        _bind_readonly(stash, root)
        linux.umount(stash, linux.MNT_DETACH)
        os.rmdir(stash)


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
