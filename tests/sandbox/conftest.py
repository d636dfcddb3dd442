"""Pools are shared per test module (starting one costs ~0.5 s), one per available backend."""
import pytest

from sandbox_helpers import BACKENDS, make_pool

NO_BACKEND = pytest.param(None, marks=pytest.mark.skip(
    reason="the sandbox needs root to give sessions their own namespaces and uid"))


@pytest.fixture(scope="module", params=BACKENDS or [NO_BACKEND])
def pool(request):
    with make_pool(request.param) as shared:
        yield shared


@pytest.fixture
def session_id(request):
    return request.node.name
