"""Where the pool puts its memory cgroups, on a fake cgroup filesystem: this machine runs cgroup
v1, TPU VMs and most containers run v2 only, so the v2 paths are checked against the kernel's
rules as simulated here (the v1 path runs for real in test_containment)."""
import errno
import os

import pytest

from sandbox import cgroups


def _touch(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


@pytest.fixture
def fake_hierarchy(tmp_path, monkeypatch):
    """A v2 mount whose top level hands down nothing, this process in /ctr (memory available
    there), and a v1 memory mount."""
    v2, v1 = str(tmp_path / "v2"), str(tmp_path / "v1")
    _touch(os.path.join(v2, "cgroup.subtree_control"))
    _touch(os.path.join(v2, "ctr", "cgroup.controllers"), "cpu memory pids\n")
    os.makedirs(v1)
    monkeypatch.setattr(cgroups, "_mounts", lambda: [("cgroup2", v2, "/", ["rw"]),
                                                      ("cgroup", v1, "/", ["rw", "memory"])])
    monkeypatch.setattr(cgroups, "_own_path", lambda controller: "/ctr" if controller == "" else "/")
    return v2, v1


def test_v2_is_preferred_at_the_top_level_then_below_the_own_cgroup_then_v1(fake_hierarchy):
    v2, v1 = fake_hierarchy
    assert list(cgroups._candidates()) == [("v2", os.path.join(v2, "ctr")), ("v1", v1)]
    _touch(os.path.join(v2, "cgroup.subtree_control"), "cpu memory\n")
    assert list(cgroups._candidates())[0] == ("v2", v2)
    _touch(os.path.join(v2, "cgroup.subtree_control"))
    _touch(os.path.join(v2, "ctr", "cgroup.controllers"), "cpu pids\n")  # memory not available there
    assert list(cgroups._candidates()) == [("v1", v1)]


def test_own_processes_move_to_a_leaf_before_memory_is_handed_down(tmp_path, monkeypatch):
    directory = str(tmp_path / "ctr")
    _touch(os.path.join(directory, "cgroup.procs"), "1\n17\n")
    _touch(os.path.join(directory, "cgroup.subtree_control"))
    real_write = cgroups._write

    own_procs = os.path.join(directory, "cgroup.procs")
    leaf_procs = os.path.join(directory, cgroups.LEAF, "cgroup.procs")

    def kernel_write(path, value):  # v2's rule: no controllers handed down over own processes
        if path == os.path.join(directory, "cgroup.subtree_control") and cgroups._read_words(own_procs):
            raise OSError(errno.EBUSY, "Device or resource busy")
        if path == leaf_procs:  # a move; process 17 exits before its turn
            real_write(own_procs, "".join(p + "\n" for p in cgroups._read_words(own_procs) if p not in (value, "17")))
            if value == "17":
                raise ProcessLookupError(errno.ESRCH, "No such process")
        with open(path, "a") as handle:  # subtree_control reads back "memory" for "+memory"
            handle.write(value.lstrip("+") + "\n")

    monkeypatch.setattr(cgroups, "_write", kernel_write)
    cgroups.enable_memory_v2(directory)
    assert cgroups._read_words(os.path.join(directory, cgroups.LEAF, "cgroup.procs")) == ["1"]
    assert cgroups._read_words(os.path.join(directory, "cgroup.subtree_control")) == ["memory"]
    cgroups.enable_memory_v2(directory)  # already handed down: nothing more is written
    assert cgroups._read_words(os.path.join(directory, "cgroup.subtree_control")) == ["memory"]


def test_other_errors_are_not_taken_for_own_processes(tmp_path, monkeypatch):
    directory = str(tmp_path / "ctr")
    _touch(os.path.join(directory, "cgroup.subtree_control"))

    def refuse(path, value):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cgroups, "_write", refuse)
    with pytest.raises(PermissionError):
        cgroups.enable_memory_v2(directory)
    assert not os.path.exists(os.path.join(directory, cgroups.LEAF))
