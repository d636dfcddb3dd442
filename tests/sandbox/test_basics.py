"""Sessions, persistence, files, faults and the pool's lifecycle."""
import io

import pytest
from PIL import Image

from sandbox import ExecResult, InterpreterPool

from sandbox_helpers import BACKENDS, make_pool, sandbox_uid_processes, wait_until


def jpeg_bytes(size=(64, 48), color=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_namespace_persists_across_calls(pool, session_id):
    assert pool.execute(session_id, "x = 20").ok
    result = pool.execute(session_id, "x += 1\nprint(x * 2)")
    assert isinstance(result, ExecResult)
    assert (result.stdout, result.stderr, result.error, result.timed_out) == ("42\n", "", None,
                                                                              False)
    assert pool.execute(session_id, "x").stdout == "21\n"


def test_sessions_do_not_share_names(pool, session_id):
    pool.execute(session_id + "-a", "secret = 'a'")
    result = pool.execute(session_id + "-b", "secret")
    assert result.error == "NameError: name 'secret' is not defined"


def test_files_seed_the_working_directory_and_input_image(pool, session_id):
    files = {"input_image.jpg": jpeg_bytes(), "notes.txt": b"hello"}
    result = pool.execute(session_id, "import os\nprint(sorted(os.listdir('.')), "
                                      "open('notes.txt').read(), input_image.size, "
                                      "input_image.mode)", files=files)
    assert result.stdout == "['input_image.jpg', 'notes.txt'] hello (64, 48) RGB\n"
    # The files stay; later calls can add more.
    result = pool.execute(session_id, "print(sorted(os.listdir('.')))", files={"b.bin": b"x"})
    assert result.stdout == "['b.bin', 'input_image.jpg', 'notes.txt']\n"


def test_input_image_is_restored_after_a_reset(pool, session_id):
    pool.execute(session_id, "x = 1", files={"input_image.jpg": jpeg_bytes((50, 70))})
    crashed = pool.execute(session_id, "import os\nos._exit(1)")
    assert crashed.session_reset and "exited with status 1" in crashed.error
    result = pool.execute(session_id, "print(input_image.size, 'x' in globals())")
    assert result.stdout == "(50, 70) False\n"


def test_error_reports_type_message_and_user_traceback(pool, session_id):
    result = pool.execute(session_id, "print('before')\ndef f():\n    return 1 / 0\nf()")
    assert result.stdout == "before\n"
    assert result.error == "ZeroDivisionError: division by zero"
    assert 'File "<cell 1>", line 3, in f' in result.stderr
    assert "worker.py" not in result.stderr  # only the user's frames
    syntax = pool.execute(session_id, "def (:")
    assert syntax.error.startswith("SyntaxError")


def test_trailing_values_are_printed_as_repr(pool, session_id):
    assert pool.execute(session_id, "'text'").stdout == "'text'\n"
    assert pool.execute(session_id, "[1, 2]").stdout == "[1, 2]\n"
    assert pool.execute(session_id, "None").stdout == ""
    assert pool.execute(session_id, "x = 3\nx + 1").stdout == "4\n"


def test_c_level_output_and_child_processes_are_captured(pool, session_id):
    result = pool.execute(session_id, "import os, subprocess\nos.write(1, b'raw\\n')\n"
                                      "subprocess.run(['echo', 'child'])\n"
                                      "_ = os.write(2, b'err\\n')")
    assert result.stdout == "raw\nchild\n"
    assert result.stderr == "err\n"


def test_bad_arguments_are_rejected_clearly(pool):
    with pytest.raises(TypeError, match="session_id"):
        pool.execute(["list"], "1")
    with pytest.raises(TypeError, match="code must be a str"):
        pool.execute("s", b"print(1)")
    with pytest.raises(ValueError, match="plain file name"):
        pool.execute("s", "1", files={"../escape": b""})
    with pytest.raises(TypeError, match="must be bytes"):
        pool.execute("s", "1", files={"a.txt": "text"})
    with pytest.raises(ValueError, match="longer than"):
        pool.execute("s", "#" * (pool.limits.max_code_bytes + 1))


def test_bad_pool_options_are_rejected_clearly():
    with pytest.raises(ValueError, match="num_workers"):
        InterpreterPool(num_workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        InterpreterPool(timeout_s=-1)
    with pytest.raises(TypeError, match="unknown InterpreterPool options"):
        InterpreterPool(num_workers=1, no_such_option=3)
    with pytest.raises(ValueError, match="backend must be"):
        InterpreterPool(num_workers=1, backend="docker")


def test_isolation_states_every_bound(pool):
    assert pool.isolation.backend in ("bwrap", "namespaces")
    assert pool.isolation.level == "strong"
    text = pool.isolation.describe()
    for bound in ("network namespace", "view: an allowlist", "numpy", "memory:", "processes:",
                  "between calls:", "AF_UNIX", "memfd", "rlimits:"):
        assert bound in text, bound
    assert ("cgroup v1" in text or "cgroup v2" in text or "no writable memory cgroup" in text)


def test_close_session_kills_its_processes(pool, session_id):
    uid = int(pool.execute(session_id, "import os; x = 1; os.getuid()").stdout)
    assert len(sandbox_uid_processes(uid, 1)) == 1
    pool.close_session(session_id)
    assert wait_until(lambda: not sandbox_uid_processes(uid, 1))
    # A closed session starts afresh.
    assert pool.execute(session_id, "'x' in globals()").stdout == "False\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_closing_the_pool_ends_every_process(backend):
    uid_base = 1_800_000_000
    pool = make_pool(backend, uid_base=uid_base)
    for session in range(3):
        pool.execute(session, "x = 1")
    assert len(sandbox_uid_processes(uid_base)) == 3
    pool.close()
    assert pool._zygote.process.returncode is not None
    assert wait_until(lambda: not sandbox_uid_processes(uid_base))
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("s", "1")
