"""The flags every binary that loads a checkpoint and runs the rollout engine shares
(`rollout.answer`, `codedance_jax.eval.main`): defined once here, so both binaries can be
imported into one process (the test suite) without absl refusing a flag defined twice."""
from __future__ import annotations

from absl import flags

from rollout.tool_turns import DEFAULT_SYSTEM_PROMPT

flags.DEFINE_string("ckpt_dir", None, "Converted checkpoint directory (codedance_jax.hf.convert or an SFT export).")
flags.DEFINE_string("tokenizer_dir", None, "Tokenizer directory; default: the checkpoint's own tokenizer files, "
                    "else the small packaged test tokenizer (fine for random test models only).")
flags.DEFINE_string("system_prompt", DEFAULT_SYSTEM_PROMPT, "System prompt; empty for none.")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype; default: the checkpoint's config.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 decodes greedily.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 disables it; with temperature > 0).")
flags.DEFINE_integer("seed", 0, "Sampling seed (with temperature > 0).")
flags.DEFINE_integer("max_turns", 7, "Most assistant turns (the release's eval allows 7); the last tool turn asks "
                     "for the answer.")
flags.DEFINE_integer("max_turn_tokens", 2048, "Most generated tokens per assistant turn.")
flags.DEFINE_integer("max_context", 16384, "Tokens per slot's KV cache: prompt, generated and tool turns.")
flags.DEFINE_integer("prefill_chunk", 256, "Tokens per cache write when appending a prompt or tool turn.")
flags.DEFINE_integer("decode_steps", 16, "Most tokens per slot per host round trip.")
flags.DEFINE_float("code_timeout_s", 15.0, "Wall-clock limit of one code execution, in seconds.")
