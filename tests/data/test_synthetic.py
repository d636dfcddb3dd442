import contextlib
import io
import re

from PIL import Image

from codedance_jax.data.records import decode_record
from codedance_jax.data.synthetic import synthetic_record, synthetic_records
from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import resize_for_model
from codedance_jax.processing.tool_turns import TOOL_OK, ToolCall, ToolTurnFormat, render_tool_turn, tool_message

RECORDS = synthetic_records(40, seed=7)
CODE_TURN = re.compile(r"<think>.*</think>\n<code>\n```python\n(.*)\n```\n</code>", re.S)


def _has_code(record) -> bool:
    return any(message["role"] == "tool" for message in record["messages"])


def _run(record) -> ToolCall:
    """The record's code run on the image the sandbox gets, as the call the engine would record."""
    code = CODE_TURN.fullmatch(record["messages"][1]["content"]).group(1)
    image = resize_for_model(Image.open(io.BytesIO(record["images"][0])))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {"input_image": image})  # our own generated code, checked for correctness
    return ToolCall(code=code, outcome=TOOL_OK, stdout=printed.getvalue())


def test_records_depend_only_on_seed_and_index():
    assert synthetic_record(7, 12) == RECORDS[12]
    assert synthetic_records(3, seed=8)[0]["images"] != RECORDS[0]["images"]


def test_records_mix_direct_answers_and_code_trajectories():
    kinds = {_has_code(record) for record in RECORDS}
    assert kinds == {True, False}
    for record in RECORDS:
        roles = [message["role"] for message in record["messages"]]
        expected = ["user", "assistant", "tool", "assistant"] if _has_code(record) else ["user", "assistant"]
        assert roles == expected
        assert record["messages"][-1]["content"].endswith(f"<answer>{record['ground_truth']}</answer>")
        assert 100 <= min(Image.open(io.BytesIO(record["images"][0])).size) <= 300


def test_code_prints_the_ground_truth_on_the_image_the_sandbox_gets():
    coded = [record for record in RECORDS if _has_code(record)]
    assert len(coded) >= 10
    for record in coded:
        call = _run(record)
        assert call.stdout.strip() == record["ground_truth"], record["id"]
        assert record["messages"][2] == tool_message(call), record["id"]


def test_tool_turn_is_the_one_the_engine_appends(tokenizer, small_images):
    """The ids of a code record from its tool turn to the next assistant header are those the
    engine appends after running the same code (`render_tool_turn`)."""
    for record in [record for record in RECORDS if _has_code(record)][:4]:
        decoded = decode_record(record, record["id"])
        whole = render_chat(decoded.messages, tokenizer, decoded.images, image_config=small_images).input_ids
        head = render_chat(decoded.messages[:2], tokenizer, decoded.images, image_config=small_images).input_ids
        engine = render_tool_turn(_run(record), [], tokenizer, ToolTurnFormat(), small_images,
                                  last_turn=False).input_ids
        assert whole[:len(head)].tolist() == head.tolist()
        assert whole[len(head):len(head) + len(engine)].tolist() == engine.tolist(), record["id"]
        assert tokenizer.decode(engine).startswith("<|im_start|>user\n<tool_response>\nThe code ran without errors.")


def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer, small_images):
    for record in RECORDS[:6]:
        decoded = decode_record(record, record["id"])
        chat = render_chat(decoded.messages, tokenizer, decoded.images, image_config=small_images)
        trained = tokenizer.decode(chat.input_ids[chat.loss_mask == 1])
        expected = "".join(m["content"] + "<|im_end|>" for m in record["messages"] if m["role"] == "assistant")
        assert trained == expected
        assert chat.loss_mask[chat.mm_token_type_ids == 1].sum() == 0
