"""ChatML rendering: ids equal the tokenizer on the whole string / its chat template, masks and types."""
import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.tokenizer import load_tokenizer

IMAGE_PAD = 151655
CODE = "<code>\n```python\nprint(input_image.size)\n```\n</code>"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_text_only_matches_chat_template(tokenizer):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How big is the image?"},
        {"role": "assistant", "content": "Let me check. " + CODE},
        {"role": "tool", "content": "Execution succeeded.\n(640, 480)"},
        {"role": "tool", "content": "Second result."},
        {"role": "assistant", "content": "<answer>640x480</answer>"},
        {"role": "user", "content": "And its mode?"},
    ]
    rendered = render_chat(messages, tokenizer, add_generation_prompt=True)
    template = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.input_ids.tolist() == ids_of(tokenizer, template)
    assert rendered.input_ids.dtype == np.int32


def make_image(height, width, value=0):
    return Image.new("RGB", (width, height), (value, 100, 200))


def test_images_and_tool_turns_match_whole_string(tokenizer):
    images = [make_image(480, 640), make_image(100, 300), make_image(60, 60)]
    messages = [
        {"role": "user", "content": "<image>\nCount the cats."},
        {"role": "assistant", "content": "<think>crop</think>" + CODE},
        {"role": "tool", "content": [{"type": "text", "text": "Execution succeeded.\nImage 1:"},
                                     {"type": "image"}, {"type": "text", "text": "Image 2:"},
                                     {"type": "image", "image": images[2]}]},
        {"role": "assistant", "content": "<answer>3</answer>"},
    ]
    rendered = render_chat(messages, tokenizer, images[:2], system_prompt="Be brief.")

    grids = Qwen2VLImageProcessorPil()(images=images, return_tensors="np")["image_grid_thw"]
    vision = ["<|vision_start|>" + "<|image_pad|>" * (int(g.prod()) // 4) + "<|vision_end|>" for g in grids]
    chatml = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{vision[0]}\nCount the cats.<|im_end|>\n"
        f"<|im_start|>assistant\n<think>crop</think>{CODE}<|im_end|>\n"
        f"<|im_start|>user\n<tool_response>\nExecution succeeded.\nImage 1:{vision[1]}Image 2:{vision[2]}"
        "\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<answer>3</answer><|im_end|>\n")
    assert rendered.input_ids.tolist() == ids_of(tokenizer, chatml)
    np.testing.assert_array_equal(rendered.image_grid_thw, grids)
    assert rendered.images == images
    np.testing.assert_array_equal(rendered.mm_token_type_ids, rendered.input_ids == IMAGE_PAD)

    # Loss only on the assistant contents and their <|im_end|>, nothing else.
    trained = rendered.input_ids[rendered.loss_mask == 1].tolist()
    expected = (ids_of(tokenizer, f"<think>crop</think>{CODE}<|im_end|>")
                + ids_of(tokenizer, "<answer>3</answer><|im_end|>"))
    assert trained == expected
    assert not rendered.loss_mask[rendered.mm_token_type_ids == 1].any()


def test_typed_parts_equal_placeholder_string(tokenizer):
    image = make_image(200, 200)
    as_string = render_chat([{"role": "user", "content": "a<image>b"}], tokenizer, [image])
    as_parts = render_chat([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"},
                                                         {"type": "text", "text": "b"}]}], tokenizer, [image])
    for field in ("input_ids", "loss_mask", "mm_token_type_ids", "image_grid_thw"):
        np.testing.assert_array_equal(getattr(as_string, field), getattr(as_parts, field))


def test_generation_prompt_is_prefix_of_full_conversation(tokenizer):
    # Content starting with newlines would merge with the header's "\n" in a one-string
    # tokenization; rendering keeps the header boundary that generation has.
    prompt = [{"role": "user", "content": "Solve it."}]
    reply = {"role": "assistant", "content": "\n\n<think>ok</think>"}
    prompt_ids = render_chat(prompt, tokenizer, add_generation_prompt=True).input_ids
    assert prompt_ids[-3:].tolist() == ids_of(tokenizer, "<|im_start|>assistant\n")
    full = render_chat(prompt + [reply], tokenizer)
    assert full.input_ids[:len(prompt_ids)].tolist() == prompt_ids.tolist()
    generated = full.input_ids[len(prompt_ids):]
    expected = ids_of(tokenizer, reply["content"] + "<|im_end|>")
    assert generated[full.loss_mask[len(prompt_ids):] == 1].tolist() == expected


def test_system_prompt_not_added_twice(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_chat(messages, tokenizer, system_prompt="other").input_ids.tolist() == \
        ids_of(tokenizer, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n")


@pytest.mark.parametrize("messages, images, error", [
    ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], [],
     "message 1: unknown role 'robot'"),
    ([{"role": "user", "content": [{"type": "video"}]}], [], "message 0, part 0: unknown part type 'video'"),
    ([{"role": "user", "content": "<image><image>"}], [Image.new("RGB", (56, 56))],
     "2 image placeholders but 1 images"),
    ([{"role": "user", "content": "no image"}], [Image.new("RGB", (56, 56))], "0 image placeholders but 1 images"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "<image>"}], [Image.new("RGB", (56, 56))],
     "message 1: assistant messages cannot contain images"),
    ([{"role": "user", "content": "see <|image_pad|>"}], [], "message 0: text contains a literal vision token"),
    ([{"role": "user", "content": None}], [], "message 0: content must be"),
    ([{"role": "user", "content": "<image>"}], [b"png"], r"images\[0\] is a bytes"),
    ([{"role": "user", "content": "<image><image>"}], [Image.new("RGB", (56, 56)), Image.new("RGB", (10, 500))],
     "image 1 of the conversation: image of size 500x10"),
])
def test_errors(tokenizer, messages, images, error):
    with pytest.raises(ValueError, match=error):
        render_chat(messages, tokenizer, images)
