"""The embedded task suite: deterministic records, easy items answered directly and hard ones with
code, and code that prints the ground truth when the real sandbox runs it on the JPEG the engine
sends (every task kind, failed first calls included)."""
import collections
import io
import re

import numpy as np
import pytest
from PIL import Image

from codedance_jax.data.records import decode_record
from codedance_jax.data.synthetic import TASKS, synthetic_record, synthetic_records
from codedance_jax.data.trajectories import syntax_error_call
from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tool_turns import TOOL_OK, ToolCall, ToolTurnFormat, render_tool_turn, tool_message
from rollout.engine import sandbox_files
from rollout.tool_turns import outcome_of
from sandbox import InterpreterPool, IsolationUnavailable

RECORDS = synthetic_records(120, seed=7)
CODE_TURN = re.compile(r"<think>.*</think>\n<code>\n```python\n(.*)\n```\n</code>", re.S)
ALL_KINDS = {"exists", "count_few", "bar_labelled", "search_large", "count", "largest", "count_many", "bar_value",
             "search_small"}


def _roles(record):
    return [message["role"] for message in record["messages"]]


def _code_of(message):
    return CODE_TURN.fullmatch(message["content"]).group(1)


@pytest.fixture(scope="module")
def pool():
    try:
        with InterpreterPool(num_workers=2, timeout_s=30.0, memory_mb=1024, uid_base=1_760_000_000) as shared:
            yield shared
    except IsolationUnavailable as exc:
        pytest.skip(str(exc))


def test_records_depend_only_on_seed_and_index():
    assert synthetic_record(7, 12) == RECORDS[12]
    assert synthetic_records(3, seed=8)[0]["images"] != RECORDS[0]["images"]


def test_every_kind_appears_with_its_difficulty_and_turns():
    assert {record["kind"] for record in RECORDS} == ALL_KINDS
    easy = {task(np.random.default_rng(0), False).kind for task in TASKS["easy"]}
    fixes = 0
    for record in RECORDS:
        assert record["difficulty"] == ("easy" if record["kind"] in easy else "hard"), record["id"]
        if record["difficulty"] == "easy":
            assert _roles(record) == ["user", "assistant"], record["id"]
        else:
            assert _roles(record) in (["user", "assistant", "tool", "assistant"],
                                      ["user", "assistant", "tool", "assistant", "tool", "assistant"]), record["id"]
            fixes += len(record["messages"]) == 6
        assert record["messages"][-1]["content"].endswith(f"<answer>{record['ground_truth']}</answer>")
        assert 100 <= min(Image.open(io.BytesIO(record["images"][0])).size) <= 300
    assert 0 < fixes < sum(record["difficulty"] == "hard" for record in RECORDS)


def test_a_call_meant_to_fail_must_fail():
    with pytest.raises(ValueError, match="parses fine"):
        syntax_error_call("print(1)")


# The demo's image budget (224x224 px) shrinks the larger images; the default leaves them as drawn.
@pytest.mark.parametrize("max_pixels", [224 * 224, ImageProcessingConfig().max_pixels])
def test_code_prints_the_ground_truth_in_the_sandbox_on_the_jpeg_it_receives(pool, max_pixels):
    """Each tool turn of a hard record is the one the engine writes for what the real sandbox
    returns: the failed call's error text, then the ground truth printed."""
    config = ImageProcessingConfig(max_pixels=max_pixels)
    checked = collections.Counter()
    for record in [record for record in RECORDS if record["difficulty"] == "hard"]:
        image = Image.open(io.BytesIO(record["images"][0]))
        files = sandbox_files(image, config)
        session = f"{record['id']}-{max_pixels}"
        for k, message in enumerate(record["messages"]):
            if message["role"] != "tool":
                continue
            code = _code_of(record["messages"][k - 1])
            result = pool.execute(session, code, files=files)
            files = None  # the session keeps its files
            call = ToolCall(code=code, outcome=outcome_of(result.error, result.timed_out), error=result.error,
                            stdout=result.stdout, stderr=result.stderr)
            assert tool_message(call) == message, (record["id"], result)
            checked[record["kind"], call.outcome] += 1
        pool.close_session(session)
        assert call.stdout.strip() == record["ground_truth"], record["id"]
    assert {kind for kind, _ in checked} == ALL_KINDS - {"exists", "count_few", "bar_labelled", "search_large"}
    assert {outcome for _, outcome in checked} == {"ok", "error"}


def test_tool_turn_is_the_one_the_engine_appends(tokenizer, small_images):
    """The ids of a code record from its tool turn to the next assistant header are those the
    engine appends for the same call (`render_tool_turn`)."""
    for record in [record for record in RECORDS if record["difficulty"] == "hard"][:4]:
        decoded = decode_record(record, record["id"])
        whole = render_chat(decoded.messages, tokenizer, decoded.images, image_config=small_images).input_ids
        head = render_chat(decoded.messages[:2], tokenizer, decoded.images, image_config=small_images).input_ids
        first = decoded.messages[2]["content"]
        call = (ToolCall(code="", outcome=TOOL_OK, stdout=record["ground_truth"] + "\n")
                if first.startswith(ToolTurnFormat().success) else syntax_error_call(_code_of(decoded.messages[1])))
        engine = render_tool_turn(call, [], tokenizer, ToolTurnFormat(), small_images, last_turn=False).input_ids
        assert whole[:len(head)].tolist() == head.tolist()
        assert whole[len(head):len(head) + len(engine)].tolist() == engine.tolist(), record["id"]
        assert tokenizer.decode(engine).startswith("<|im_start|>user\n<tool_response>\nThe code ")


def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer, small_images):
    for record in RECORDS[:8]:
        decoded = decode_record(record, record["id"])
        chat = render_chat(decoded.messages, tokenizer, decoded.images, image_config=small_images)
        trained = tokenizer.decode(chat.input_ids[chat.loss_mask == 1])
        expected = "".join(m["content"] + "<|im_end|>" for m in record["messages"] if m["role"] == "assistant")
        assert trained == expected
        assert chat.loss_mask[chat.mm_token_type_ids == 1].sum() == 0
