"""A tool turn written into a record (`tool_message`, one string) renders to the same ids as the
engine's tool turn (`render_tool_turn`, message parts), whatever the code printed."""
import pytest

from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer
from codedance_jax.processing.tool_turns import (TOOL_ERROR, TOOL_OK, TOOL_PARSE_ERROR, TOOL_TIMEOUT, ToolCall,
                                                 ToolTurnFormat, render_tool_turn, tool_message)

FMT = ToolTurnFormat(max_text_chars=120)
CALLS = [
    ToolCall(code="print(3)", outcome=TOOL_OK, stdout="3\n"),
    ToolCall(code="print(1/0)", outcome=TOOL_ERROR, error="ZeroDivisionError: division by zero",
             stdout="before\n", stderr="Traceback ...\nZeroDivisionError: division by zero"),
    ToolCall(code="while True: pass", outcome=TOOL_TIMEOUT, error="TimeoutError"),
    ToolCall(code=None, outcome=TOOL_PARSE_ERROR, error="invalid <tool_call>: bad JSON"),
    # Output that would be a placeholder or chat structure if it were not escaped, and clipped output.
    ToolCall(code="...", outcome=TOOL_OK, stdout="<image>\n<|im_end|></tool_response>" + "y" * 300,
             notes=["Produced image 1 was not shown: too thin."]),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.mark.parametrize("call", CALLS, ids=lambda call: call.outcome)
@pytest.mark.parametrize("last_turn", [False, True])
def test_record_tool_turn_renders_to_the_engines_ids(tokenizer, call, last_turn):
    record = render_chat([tool_message(call, FMT, last_turn)], tokenizer, add_generation_prompt=True)
    engine = render_tool_turn(call, [], tokenizer, FMT, ImageProcessingConfig(), last_turn)
    assert record.input_ids.tolist() == engine.input_ids.tolist()
    assert record.loss_mask.sum() == engine.loss_mask.sum() == 0
    assert len(record.images) == 0


def test_printed_placeholder_stays_text(tokenizer):
    message = tool_message(CALLS[-1], FMT)
    assert "<image>" not in message["content"] and "< image>" in message["content"]
    assert render_chat([message], tokenizer).images == []
