"""The seccomp filter's syscall tables: both architectures deny the same calls, and their numbers
are the kernel's (checked against the installed kernel headers where they exist)."""
import os
import re

import pytest

from sandbox import seccomp

HEADERS = {"x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
           "aarch64": "/usr/include/asm-generic/unistd.h"}  # the generic table is aarch64's


def test_every_architecture_denies_the_same_calls():
    names = [set(arch.denied) for arch in seccomp.ARCHES.values()]
    assert all(n == names[0] for n in names)
    assert {"memfd_create", "shmget", "msgget", "semget", "unshare", "setns", "bpf"} <= names[0]


@pytest.mark.parametrize("machine", sorted(HEADERS))
def test_syscall_numbers_are_the_kernels(machine):
    if not os.path.exists(HEADERS[machine]):
        pytest.skip(f"no kernel headers at {HEADERS[machine]}")
    with open(HEADERS[machine]) as header:
        numbers = {m.group(1): int(m.group(2))
                   for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", header.read())}
    arch = seccomp.ARCHES[machine]
    named = {**arch.denied, "clone": arch.clone, "clone3": arch.clone3, "socket": arch.socket,
             "socketpair": arch.socketpair}
    assert {name: numbers.get(name) for name in named} == named
