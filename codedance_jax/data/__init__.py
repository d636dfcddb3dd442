"""Trajectory records (JSONL / parquet in the CodeDance release's form), a synthetic task, TFDS
array_record datasets, and the grain SFT input pipeline."""
