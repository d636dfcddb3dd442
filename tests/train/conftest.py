"""Fixtures of the training tests."""
import pytest


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache shared by one module's binary runs: they compile the same
    steps, so only the first run pays for it."""
    return str(tmp_path_factory.mktemp("jax_cache"))
