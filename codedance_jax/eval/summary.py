"""summary.json and the printed table: the benchmark's official numbers over the scored items,
what was skipped and why, which rules decided, and (for model runs) tool use, turns and tokens."""
from __future__ import annotations

import collections
import json

from codedance_jax.eval.items import DataError, Dataset

MAX_LISTED_SKIPS = 50


def summarize(benchmark, dataset: Dataset, records: list[dict], selected_ids=None) -> dict:
    """records: prediction records (scored, or {"id", "skipped"}) for items of `dataset`;
    selected_ids: the items the run covered (default: all of the dataset)."""
    items = {item.id: item for item in dataset.items}
    selected = list(items) if selected_ids is None else list(selected_ids)
    unknown = [r["id"] for r in records if r["id"] not in items]
    if unknown:
        raise DataError(f"{benchmark.name}: {len(unknown)} predictions for ids {dataset.source} does not have, "
                        f"e.g. {unknown[:5]}")
    by_id = {r["id"]: r for r in records}
    scored = [by_id[i] for i in selected if i in by_id and "skipped" not in by_id[i]]
    run_skips = [f"item {by_id[i]['id']}: {by_id[i]['skipped']}" for i in selected if "skipped" in by_id.get(i, {})]
    skips = [str(s) for s in dataset.skipped] + run_skips
    summary = {"benchmark": benchmark.name, "options": benchmark.options, "data": dataset.source,
               "num_items": len(scored), "overall": 0.0}
    if scored:
        summary.update(benchmark.summarize([items[r["id"]] for r in scored], {r["id"]: bool(r["correct"])
                                                                              for r in scored}))
    summary.update({"skipped": len(skips), "skips": skips[:MAX_LISTED_SKIPS],
                    "missing": sum(i not in by_id for i in selected),
                    "decided_by": dict(collections.Counter(r["decided_by"] for r in scored))})
    runs = [r for r in scored if "turns" in r]
    if runs:
        n = len(runs)
        summary.update({
            "tool_call_rate": 100.0 * sum(r["tool_calls"] > 0 for r in runs) / n,
            "mean_tool_calls": sum(r["tool_calls"] for r in runs) / n,
            "tool_call_success_rate": _success_rate(runs),
            "mean_turns": sum(r["num_turns"] for r in runs) / n,
            "mean_generated_tokens": sum(r["generated_tokens"] for r in runs) / n,
            "mean_total_tokens": sum(r["total_tokens"] for r in runs) / n,
            "finish_reasons": dict(collections.Counter(r["finish_reason"] for r in runs))})
    return summary


def _success_rate(runs) -> float | None:
    outcomes = [o for r in runs for o in r["tool_outcomes"]]
    return 100.0 * outcomes.count("ok") / len(outcomes) if outcomes else None


def _flatten(value, prefix=""):
    """(name, value) rows of the numbers in a nested summary, accuracy dicts shown as one cell."""
    if isinstance(value, dict) and "accuracy" in value and "total" in value:
        yield prefix, f"{value['accuracy']:.2f} ({value['correct']}/{value['total']})"
    elif isinstance(value, dict):
        for key, sub in value.items():
            yield from _flatten(sub, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, float):
        yield prefix, f"{value:.2f}"
    elif isinstance(value, (int, str)):
        yield prefix, str(value)


def rows(summary: dict) -> list[tuple[str, str]]:
    """(name, value) rows of a summary; skip reasons and run options are left to the JSON."""
    return [(k, v) for k, v in _flatten({k: v for k, v in summary.items() if k not in ("skips", "options")}) if k]


def table(summary: dict) -> str:
    lines = rows(summary)
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def write(summary: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
