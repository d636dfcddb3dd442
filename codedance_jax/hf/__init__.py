"""Hugging Face checkpoints in (convert) and out (export), driven by one key table (keymap)."""
