"""Which task rules (general or math) score a record, from its `data_source` / `extra_info`.

The release's RL data names its sources: vstar, vl_agent, chart and SA1B are scored as general
tasks, thinklite_eureka and xince as math. The release sends any other source to the general
rules silently; here an unknown source is an error unless a default task is configured.
`extra_info["task"]` ("general" / "math"), when present, overrides the source.
"""
from __future__ import annotations

from collections.abc import Mapping

from codedance_jax.rewards.extract import GENERAL, MATH, TASKS, check_task

DATA_SOURCE_TASKS = {
    "vstar": GENERAL, "vl_agent": GENERAL, "chart": GENERAL, "sa1b": GENERAL,
    "thinklite_eureka": MATH, "xince": MATH,
    "synthetic": GENERAL,  # the project's embedded task (codedance_jax.data.synthetic)
}


def task_for_record(data_source: str | None, extra_info: Mapping | None = None, default: str | None = None,
                    record_id=None) -> str:
    """The task of a record; ValueError naming the record for an unknown source without a default."""
    hint = (extra_info or {}).get("task")
    if hint is not None:
        if hint not in TASKS:
            raise ValueError(f"record {record_id}: extra_info.task is {hint!r}; expected one of {TASKS}")
        return hint
    task = DATA_SOURCE_TASKS.get(str(data_source or "").strip().lower())
    if task is not None:
        return task
    if default is not None:
        return check_task(default)
    raise ValueError(f"record {record_id}: unknown data_source {data_source!r}; known: {sorted(DATA_SOURCE_TASKS)} "
                     "(configure a default task to score other sources)")
