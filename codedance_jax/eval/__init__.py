"""Benchmark evaluation: each benchmark read from its public files, run through the rollout
engine, scored by its official rule on top of the one answer matcher (`codedance_jax.rewards`),
and written out as predictions, a summary and an HTML report.

    python -m codedance_jax.eval.main --ckpt_dir=CKPT --benchmark=chartqa --data=ChartQA/test --out_dir=out
    python -m codedance_jax.eval.score --benchmark=chartqa --data=ChartQA/test --predictions=preds.jsonl

Modules: `items` (the item model, skips, data errors, images), `tables` (json / jsonl / parquet /
tsv rows), `prompts`, `scoring` (answer extraction, verdicts, accuracy tables), `registry`
(benchmarks by name), `benchmarks/` (one reader + scorer per benchmark), `predictions`
(resumable JSONL files, sharding, merge), `records` (a trajectory as a prediction record),
`runner` (items through the engine), `summary`, `report` (HTML), `main` and `score` (binaries).
"""
