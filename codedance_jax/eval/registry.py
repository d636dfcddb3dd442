"""Benchmarks by name. A benchmark is a reader for its public file form(s), a prompt per item
(built by the reader) and a scorer (`check` on one answer, `summarize` over all of them).

    benchmark = registry.get("mathverse_testmini:version=all")   # NAME[:key=value]...
    dataset = benchmark.read("/data/MathVerse/testmini.json")
"""
from __future__ import annotations

import abc
from typing import Mapping

from codedance_jax import rewards
from codedance_jax.eval import scoring
from codedance_jax.eval.items import DataError, Dataset, Item

BENCHMARKS: dict[str, type["Benchmark"]] = {}


class UnknownBenchmark(DataError):
    pass


class Benchmark(abc.ABC):
    name = ""
    task = rewards.GENERAL
    data_help = ""                       # what --data must point at
    defaults: Mapping[str, str] = {}     # options (NAME:key=value) and their defaults
    breakdowns: tuple[str, ...] = ("category",)  # item fields reported per value

    def __init__(self, **options: str):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise UnknownBenchmark(f"{self.name}: unknown option(s) {unknown}; options: {dict(self.defaults) or 'none'}")
        self.options = {**self.defaults, **options}

    @abc.abstractmethod
    def read(self, path: str | None) -> Dataset:
        """The benchmark's items from its public file form at `path`."""

    def task_of(self, item: Item) -> str:
        return item.task or self.task

    def check(self, item: Item, answer: str) -> rewards.Match:
        """The benchmark's rule for one extracted answer; the default is the shared matcher."""
        return rewards.match_answer(answer, item.gold, item.options or None, self.task_of(item))

    def summarize(self, items: list[Item], correct: Mapping[str, bool]) -> dict:
        """`overall` (percent) and breakdowns over the scored items."""
        summary = {"overall": scoring.accuracy(correct[item.id] for item in items)["accuracy"]}
        for field in self.breakdowns:
            summary[f"by_{field}"] = scoring.breakdown(items, correct, lambda item: item.fields.get(field))
        return summary


def register(cls: type[Benchmark]) -> type[Benchmark]:
    BENCHMARKS[cls.name] = cls
    return cls


def names() -> list[str]:
    _load_all()
    return sorted(BENCHMARKS)


def get(spec: str) -> Benchmark:
    """The benchmark named by `NAME[:key=value]...`."""
    _load_all()
    name, *pairs = spec.strip().split(":")
    if name not in BENCHMARKS:
        raise UnknownBenchmark(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UnknownBenchmark(f"{spec!r}: option {pair!r} must be key=value")
        options[key.strip()] = value.strip()
    return BENCHMARKS[name](**options)


def _load_all() -> None:
    import codedance_jax.eval.benchmarks  # noqa: F401  (each module registers itself)
