"""Host-side (numpy) input processing for Qwen2.5-VL: images, chat rendering, M-RoPE positions,
batching. Everything here matches transformers 5.x outputs exactly."""
