import contextlib
import io
import re

from PIL import Image

from codedance_jax.data.records import decode_record
from codedance_jax.data.synthetic import synthetic_record, synthetic_records
from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import resize_for_model

RECORDS = synthetic_records(40, seed=7)


def _has_code(record) -> bool:
    return any(message["role"] == "tool" for message in record["messages"])


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
        code = re.fullmatch(r"<think>.*</think>\n<code>\n```python\n(.*)\n```\n</code>",
                            record["messages"][1]["content"], re.S).group(1)
        image = resize_for_model(Image.open(io.BytesIO(record["images"][0])))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, {"input_image": image})  # our own generated code, checked for correctness
        assert printed.getvalue().strip() == record["ground_truth"], record["id"]
        assert record["ground_truth"] in record["messages"][2]["content"]


def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer, small_images):
    for record in RECORDS[:6]:
        decoded = decode_record(record, record["id"])
        chat = render_chat(decoded.messages, tokenizer, decoded.images, image_config=small_images)
        trained = tokenizer.decode(chat.input_ids[chat.loss_mask == 1])
        expected = "".join(m["content"] + "<|im_end|>" for m in record["messages"] if m["role"] == "assistant")
        assert trained == expected
        assert chat.loss_mask[chat.mm_token_type_ids == 1].sum() == 0
