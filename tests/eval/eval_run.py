"""Runs the eval.main binary in this process (so every run shares one JAX compilation cache)
with a small engine shape. Imported by name: tests/ is on the path."""
from codedance_jax.eval import main as eval_main

ENGINE_FLAGS = ["--num_slots=2", "--max_context=512", "--prefill_chunk=64", "--decode_steps=8", "--max_turns=3",
                "--max_turn_tokens=24", "--max_tool_tokens=300", "--sandbox_workers=1", "--progress=false",
                "--max_pixels=50176"]


def run_main(*args: str) -> None:
    flags = eval_main.FLAGS
    flags.unparse_flags()
    flags(["eval.main", *ENGINE_FLAGS, *args])
    eval_main.main([])
