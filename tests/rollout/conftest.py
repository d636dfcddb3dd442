"""Shared fixtures: the packaged tokenizer, one sandbox pool, and engines over the tiny random
model of `hf_pair`. Engines share one slot shape so they share compilations."""
import dataclasses

import pytest

from codedance_jax.processing.tokenizer import load_tokenizer
from rollout.engine import Engine, EngineConfig
from rollout.sampling import SamplingParams
from sandbox import InterpreterPool, IsolationUnavailable

TEST_ENGINE = EngineConfig(num_slots=2, max_context=512, prefill_chunk=64, decode_steps=8, max_turns=5,
                           max_turn_tokens=96, max_response_tokens=400, max_tool_tokens=300,
                           sampling=SamplingParams(temperature=1.0))


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(None)


@pytest.fixture(scope="session")
def pool():
    try:
        with InterpreterPool(num_workers=2, timeout_s=1.0, memory_mb=512, uid_base=1_700_000_000,
                             max_sessions=16) as shared:
            yield shared
    except IsolationUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_model(hf_pair):
    return hf_pair(tie=True)[1]


@pytest.fixture(scope="session")
def make_engine(tiny_model, tokenizer, pool):
    def make(**overrides):
        return Engine(tiny_model, tokenizer, pool, dataclasses.replace(TEST_ENGINE, **overrides))
    return make

