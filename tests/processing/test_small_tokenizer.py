"""The demo preset's tokenizer: the committed files are what the builder makes from the suite,
any text round-trips, and its vision ids are the ones the `demo` model config uses."""
from codedance_jax.data.synthetic import synthetic_records
from codedance_jax.processing.small_tokenizer import build, corpus
from codedance_jax.processing.tokenizer import load_tokenizer, pad_token_id
from configs.sft import DEMO_TOKENIZER
from models.qwen2_5_vl import get_preset

TOKENIZER = load_tokenizer(DEMO_TOKENIZER)


def test_committed_files_are_what_the_builder_makes():
    assert build(corpus()).get_vocab() == TOKENIZER.get_vocab()


def test_ids_fit_the_demo_model_and_match_its_vision_ids():
    model = get_preset("demo")
    assert len(TOKENIZER) <= model.text.vocab_size
    ids = {token: TOKENIZER.convert_tokens_to_ids(token)
           for token in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    assert ids == {"<|image_pad|>": model.image_token_id, "<|video_pad|>": model.video_token_id,
                   "<|vision_start|>": model.vision_start_token_id, "<|vision_end|>": model.vision_end_token_id}
    assert pad_token_id(TOKENIZER) == 0


def test_suite_text_and_any_text_round_trip():
    texts = [m["content"] for r in synthetic_records(40, seed=9) for m in r["messages"]]
    texts.append("<|im_start|>user\n<tool_response>\nré 日本 ✓ \x00\t</tool_response><think>x</think><|im_end|>")
    for text in texts:
        assert TOKENIZER.decode(TOKENIZER.encode(text)) == text
