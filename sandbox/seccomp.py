"""A seccomp filter for the interpreter: deny the syscalls that only widen the kernel's
attack surface (new namespaces, mounts, tracing, BPF, keyrings, io_uring, modules), memory
that escapes per-process accounting (SysV IPC, POSIX message queues, memfd), and sockets of
any family but AF_UNIX (vsock and netlink are not confined by a network namespace).

The uid drop already makes many of them fail; the filter also closes what an unprivileged
user may still do, above all creating user namespaces. Everything else is allowed, so
numpy, cv2 and subprocesses behave normally. x86_64 and aarch64; elsewhere `supported()` is
False and the pool says so.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import platform

from . import linux

SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture's audit id and syscall numbers for the filter."""
    audit: int
    denied: dict[str, int]
    clone: int
    clone3: int
    socket: int
    socketpair: int
    x32_bit: int | None = None  # x86_64's second ABI, refused as a whole


# Syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl, and for aarch64 the generic table
# (include/uapi/asm-generic/unistd.h; tests/sandbox/test_seccomp.py checks it where installed).
ARCHES = {
    "x86_64": Arch(
        audit=0xC000003E, clone=56, clone3=435, socket=41, socketpair=53, x32_bit=0x40000000,
        denied={
            "ptrace": 101, "syslog": 103, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167,
            "swapoff": 168, "reboot": 169, "init_module": 175, "delete_module": 176,
            "quotactl": 179, "unshare": 272, "kexec_load": 246, "add_key": 248, "request_key": 249,
            "keyctl": 250, "pivot_root": 155, "chroot": 161, "setns": 308,
            "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
            "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "perf_event_open": 298,
            "open_by_handle_at": 304, "name_to_handle_at": 303, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
            "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
            "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65,
            "semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
            "mq_open": 240, "memfd_create": 319, "memfd_secret": 447,
        }),
    "aarch64": Arch(
        audit=0xC00000B7, clone=220, clone3=435, socket=198, socketpair=199,
        denied={
            "ptrace": 117, "syslog": 116, "acct": 89, "mount": 40, "umount2": 39, "swapon": 224,
            "swapoff": 225, "reboot": 142, "init_module": 105, "delete_module": 106,
            "quotactl": 60, "unshare": 97, "kexec_load": 104, "add_key": 217, "request_key": 218,
            "keyctl": 219, "pivot_root": 41, "chroot": 51, "setns": 268,
            "process_vm_readv": 270, "process_vm_writev": 271, "finit_module": 273,
            "kexec_file_load": 294, "bpf": 280, "userfaultfd": 282, "perf_event_open": 241,
            "open_by_handle_at": 265, "name_to_handle_at": 264, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
            "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
            "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "semget": 190, "semop": 193,
            "semctl": 191, "semtimedop": 192, "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187,
            "mq_open": 180, "memfd_create": 279, "memfd_secret": 447,
        }),
}
AF_UNIX = 1
NAMESPACE_FLAGS = (linux.CLONE_NEWNS | linux.CLONE_NEWCGROUP | linux.CLONE_NEWUTS
                   | linux.CLONE_NEWIPC | linux.CLONE_NEWUSER | linux.CLONE_NEWPID
                   | linux.CLONE_NEWNET)

_LD_W_ABS, _JEQ_K, _JSET_K, _JGE_K, _RET_K = 0x20, 0x15, 0x45, 0x35, 0x06


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Instruction))]


def supported() -> bool:
    return platform.machine() in ARCHES


def _program(arch: Arch):
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    code = [
        (_LD_W_ABS, 0, 0, 4),                        # seccomp_data.arch
        (_JEQ_K, 1, 0, arch.audit),
        (_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),    # foreign ABI: no way around the list
        (_LD_W_ABS, 0, 0, 0),                        # seccomp_data.nr
    ]
    if arch.x32_bit is not None:
        code += [(_JGE_K, 0, 1, arch.x32_bit), (_RET_K, 0, 0, deny)]
    for number in sorted(arch.denied.values()):
        code += [(_JEQ_K, 0, 1, number), (_RET_K, 0, 0, deny)]
    for number in (arch.socket, arch.socketpair):
        code += [
            (_JEQ_K, 0, 4, number),
            (_LD_W_ABS, 0, 0, 16),                   # args[0]: the address family
            (_JEQ_K, 0, 1, AF_UNIX),
            (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            (_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT),
        ]
    code += [
        (_JEQ_K, 0, 1, arch.clone3),                      # clone3 hides its flags in memory;
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),  # ENOSYS makes libc use clone
        (_JEQ_K, 0, 3, arch.clone),
        (_LD_W_ABS, 0, 0, 16),                       # seccomp_data.args[0], low 32 bits
        (_JSET_K, 0, 1, NAMESPACE_FLAGS),
        (_RET_K, 0, 0, deny),
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return code


def describe() -> str:
    return ("only AF_UNIX sockets can be created (AF_INET, AF_INET6, AF_NETLINK, AF_VSOCK, ... "
            "fail with EAFNOSUPPORT); SysV IPC, POSIX message queues, memfd_create, namespace "
            "creation, mount, ptrace, bpf, keyrings, io_uring and module syscalls denied")


def install() -> None:
    """Apply the filter to this process and every child it will have (needs no_new_privs)."""
    code = _program(ARCHES[platform.machine()])
    instructions = (_Instruction * len(code))(*[_Instruction(*i) for i in code])
    program = _Program(len(code), instructions)
    linux.prctl(linux.PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(program))
