"""Pools are shared per test module (starting one costs ~0.5 s), one per available backend."""
import pytest

from sandbox_helpers import BACKENDS, make_pool

NO_BACKEND = pytest.param(None, marks=pytest.mark.skip(
    reason="the sandbox needs root to give sessions their own namespaces and uid"))


@pytest.fixture(scope="module", params=BACKENDS or [NO_BACKEND])
def pool(request):
    with make_pool(request.param) as shared:
        yield shared


@pytest.fixture(scope="module", params=BACKENDS or [NO_BACKEND])
def roomy_pool(request):
    """For work whose duration depends on the machine (walking the view, filling memory,
    printing a lot): a budget that fits a slow, loaded machine, so the verdict never depends
    on its speed."""
    with make_pool(request.param, timeout_s=300.0, uid_base=1_500_000_000) as shared:
        yield shared


@pytest.fixture
def session_id(request):
    return request.node.name
