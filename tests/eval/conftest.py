"""Eval test fixtures: the tiny random checkpoint of `hf_pair` (tests/conftest.py), shared by
every test that runs the engine, so the whole folder compiles the model once."""
import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(hf_pair):
    return hf_pair(tie=True)[2]
