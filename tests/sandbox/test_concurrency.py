"""More sessions than workers, concurrent calls, eviction and restarts."""
import concurrent.futures
import time

import pytest

from sandbox_helpers import BACKENDS, make_pool


def test_many_sessions_on_two_workers(pool, session_id):
    sessions = [f"{session_id}-{i}" for i in range(10)]
    for round_ in range(3):
        futures = {s: pool.submit(s, f"n = globals().get('n', 0) + {i}\nn")
                   for i, s in enumerate(sessions)}
        for i, s in enumerate(sessions):
            assert futures[s].result(timeout=60).stdout == f"{i * (round_ + 1)}\n"
    for s in sessions:
        pool.close_session(s)


def test_calls_to_one_session_run_in_order(pool, session_id):
    pool.execute(session_id, "log = []")
    futures = [pool.submit(session_id, f"log.append({i})") for i in range(8)]
    concurrent.futures.wait(futures)
    assert pool.execute(session_id, "log").stdout == f"{list(range(8))}\n"


def test_close_session_cancels_queued_calls(pool, session_id):
    running = pool.submit(session_id, "import time\ntime.sleep(0.5)")
    queued = [pool.submit(session_id, "print('never')") for _ in range(3)]
    time.sleep(0.1)
    pool.close_session(session_id)
    assert running.result().ok
    assert all(f.cancelled() for f in queued)
    assert pool.execute(session_id, "print('fresh')").stdout == "fresh\n"


def test_workers_bound_concurrency(pool, session_id):
    started = time.monotonic()
    futures = [pool.submit(f"{session_id}-{i}", "import time\ntime.sleep(0.5)")
               for i in range(4)]
    assert all(f.result().ok for f in futures)
    assert time.monotonic() - started >= 0.95  # 4 half-second calls on 2 workers


@pytest.mark.parametrize("backend", BACKENDS[:1])
def test_sessions_beyond_max_sessions_are_evicted_and_reported(backend):
    with make_pool(backend, max_sessions=3, uid_base=1_700_000_000) as pool:
        for i in range(5):
            pool.execute(i, f"value = {i}", files={"seed.txt": str(i).encode()})
        assert pool.active_sessions <= 3
        result = pool.execute(0, "print(open('seed.txt').read(), 'value' in globals())")
        assert result.session_reset and "evicted" in result.stderr
        assert result.stdout == "0 False\n"  # seed files come back, variables do not
        assert pool.execute(4, "value").stdout == "4\n"


@pytest.mark.parametrize("backend", BACKENDS[:1])
def test_pool_survives_its_zygote_dying(backend):
    with make_pool(backend, uid_base=1_600_000_000) as pool:
        pool.execute("s", "x = 1")
        pool._zygote.process.kill()  # simulate the sandbox being killed from outside
        pool._zygote.process.wait()
        first = pool.execute("s", "print('x' in globals())")
        assert (first.stdout, first.error, first.session_reset) == ("False\n", None, True)
        assert "the sandbox was restarted" in first.stderr
        assert pool.execute("s", "print('back')").stdout == "back\n"
        assert pool.execute("t", "print('new')").stdout == "new\n"
