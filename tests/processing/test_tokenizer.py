"""Tokenizer loading: the packaged test tokenizer carries Qwen2.5-VL's special token ids."""
import pytest

from codedance_jax.processing.tokenizer import load_tokenizer, packaged_test_tokenizer_dir

QWEN25_VL_SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                         "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                         "<|video_pad|>": 151656}


def test_packaged_tokenizer_has_qwen25_vl_ids():
    tokenizer = load_tokenizer(packaged_test_tokenizer_dir())
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN25_VL_SPECIAL_IDS} == QWEN25_VL_SPECIAL_IDS


def test_missing_directory_is_named(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
