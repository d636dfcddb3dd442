"""A small byte-level BPE tokenizer for the `demo` preset, trained on the embedded task suite.

On a CPU the LM head (vocab x hidden) dominates a small model's step; with Qwen's 152k vocabulary
it costs ~50x the rest of the `demo` model. This tokenizer has at most 1024 ids: Qwen's 26 added tokens
(ChatML, vision, tool and think tokens) first, in Qwen's order, so id = Qwen id - 151643; then
the 256 byte symbols, so any text round-trips; then merges learned from the suite's SFT turns,
the system prompt and the tool-turn wording. Checkpoints trained with it carry its files.

    python -m codedance_jax.processing.small_tokenizer --out_dir=configs/demo_tokenizer
"""
from __future__ import annotations

import dataclasses

from absl import app, flags
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from codedance_jax.processing.tool_turns import ToolTurnFormat

VOCAB_SIZE = 1024  # the suite saturates below this (~1000 ids); the `demo` model has 1024 rows
QWEN_FIRST_ADDED_ID = 151643
# Qwen2.5's added tokens in id order (151643 ...); `special` ones are dropped by skip_special_tokens.
ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False))
NUM_SFT_RECORDS = 2000


def small_id(token: str) -> int:
    """The id of one of Qwen's added tokens in this vocabulary."""
    return [name for name, _ in ADDED_TOKENS].index(token)


def corpus(num_records: int = NUM_SFT_RECORDS) -> list[str]:
    from codedance_jax.data.synthetic import SPLIT_SEEDS, synthetic_records
    from rollout.tool_turns import DEFAULT_SYSTEM_PROMPT

    texts = [DEFAULT_SYSTEM_PROMPT, "system", "user", "assistant",
             *(v for v in dataclasses.asdict(ToolTurnFormat()).values() if isinstance(v, str))]
    for record in synthetic_records(num_records, seed=SPLIT_SEEDS["sft"]):
        texts += [m["content"] for m in record["messages"]]
    return texts


def build(texts: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[name for name, _ in ADDED_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    # Re-declared with Qwen's special / not-special split; existing tokens keep their ids.
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False)
                                  for name, special in ADDED_TOKENS if special])
    tokenizer.add_tokens([AddedToken(name, special=False, normalized=False)
                          for name, special in ADDED_TOKENS if not special])
    for name, _ in ADDED_TOKENS:
        if tokenizer.token_to_id(name) != small_id(name):
            raise AssertionError(f"{name} got id {tokenizer.token_to_id(name)}, expected {small_id(name)}")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def main(argv):
    del argv
    build(corpus()).save_pretrained(flags.FLAGS.out_dir)


if __name__ == "__main__":
    # Defined here, not on import: other binaries (eval.main) define their own --out_dir.
    flags.DEFINE_string("out_dir", None, "Where to write tokenizer.json and tokenizer_config.json.", required=True)
    app.run(main)
