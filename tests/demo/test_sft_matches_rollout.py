"""What the demo's SFT stage trains on is token for token what its GRPO and eval stages roll out:
each SFT record's assistant turns, forced through the engine with the demo's rollout settings and
the real sandbox, give exactly the record's rendered ids (tool turns included, a failed first call
and its fix included)."""
import io

import numpy as np
import pytest
from PIL import Image

from codedance_jax.data.synthetic import SPLIT_SEEDS, synthetic_records
from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer
from configs.grpo import get_config
from models.qwen2_5_vl import Qwen2_5_VL, get_preset
from rollout.engine import Engine, Request
from sandbox import InterpreterPool, IsolationUnavailable
from train.grpo import engine_config


def _records():
    """An easy record, a hard one and a hard one whose first call fails, from the SFT split."""
    records = synthetic_records(40, seed=SPLIT_SEEDS["sft"])
    easy = next(r for r in records if r["difficulty"] == "easy")
    hard = next(r for r in records if r["difficulty"] == "hard" and len(r["messages"]) == 4)
    fixed = next(r for r in records if len(r["messages"]) == 6)
    return [easy, hard, fixed]


def test_sft_records_are_what_the_demo_engine_appends():
    config = get_config("demo")
    tokenizer = load_tokenizer(config.tokenizer_dir)
    images = ImageProcessingConfig(min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
    records = _records()
    requests, expected = [], []
    for record in records:
        image = Image.open(io.BytesIO(record["images"][0])).convert("RGB")
        requests.append(Request(messages=record["messages"][:1], images=[image], request_id=record["id"],
                                forced_turns=[m["content"] + "<|im_end|>" for m in record["messages"]
                                              if m["role"] == "assistant"]))
        expected.append(render_chat(record["messages"], tokenizer, [image], image_config=images).input_ids)
    model = Qwen2_5_VL(get_preset(config.model_preset))
    try:
        with InterpreterPool(num_workers=2, timeout_s=10.0, memory_mb=512, uid_base=1_730_000_000) as pool:
            trajectories = Engine(model, tokenizer, pool, engine_config(config, images)).generate(requests)
    except IsolationUnavailable as exc:
        pytest.skip(str(exc))
    for record, trajectory, ids in zip(records, trajectories, expected):
        assert [call.outcome for call in trajectory.tool_calls] == \
            {2: [], 4: ["ok"], 6: ["error", "ok"]}[len(record["messages"])], record["id"]
        got = np.asarray(trajectory.tokens)
        # The rendering ends with the final turn's "<|im_end|>\n"; the trajectory stops at "<|im_end|>".
        assert got.tolist() == ids[: len(got)].tolist(), (record["id"], tokenizer.decode(got), tokenizer.decode(ids))
        assert len(ids) - len(got) <= 1, record["id"]
