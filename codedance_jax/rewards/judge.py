"""An optional LLM judge for free-form answers: any OpenAI-compatible chat server (vLLM, SGLang,
a hosted API) through the `openai` client. Off unless a `Judge` is passed to `score_response` or
`compute_rewards`, which ask it only about answers the rules called wrong (see `score`).

The judge is asked whether the model's answer means the same as the reference and must reply with a
single 1 or 0; a reply that holds both or neither counts as a failed request, never as a guess.
Each request has a timeout (`timeout_s`) and is retried by the client (`max_retries`, with its
backoff) on connection errors, timeouts, 429 and 5xx. At most `concurrency` requests run at once.
Verdicts are cached in memory by (model, prompt), and in a JSON file when `cache_path` is set (read
at start, rewritten after each batch). When a request still fails, the judge raises
`JudgeUnavailable` naming the server and the error, or with `fallback_to_rules` returns None so the
rules' verdict stands, and counts it in `stats["fallbacks"]`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from codedance_jax.rewards.match import ground_truths

DEFAULT_PROMPT = (
    "You check answers to questions about images. Decide whether the model's answer means the same as "
    "the reference answer; wording, articles, units written out and added explanation do not matter, a "
    "different value or choice does.\n\n"
    "Question: {question}\nReference answer: {ground_truth}\nModel's answer: {prediction}\n\n"
    "Reply with 1 if they agree and 0 if they do not, and nothing else.")
_DIGIT = re.compile(r"(?<![\d.])[01](?![\d.])")


class JudgeUnavailable(RuntimeError):
    """The judge server could not give a verdict and no fallback to the rules is configured."""


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    base_url: str                     # e.g. "http://127.0.0.1:8000/v1"
    model: str = "judge"
    api_key: str = "EMPTY"
    timeout_s: float = 30.0
    max_retries: int = 2
    concurrency: int = 16
    temperature: float = 0.0
    max_tokens: int = 8
    cache_path: str | None = None
    fallback_to_rules: bool = False
    prompt: str = DEFAULT_PROMPT      # format fields: question, ground_truth, prediction


def parse_verdict(reply: str | None) -> bool | None:
    """1 -> True, 0 -> False; None when the reply states both digits or neither."""
    digits = set(_DIGIT.findall(reply or ""))
    return digits == {"1"} if len(digits) == 1 else None


class Judge:
    def __init__(self, config: JudgeConfig):
        from openai import OpenAI
        self.config = config
        self._client = OpenAI(base_url=config.base_url, api_key=config.api_key, timeout=config.timeout_s,
                              max_retries=config.max_retries)
        self._lock = threading.Lock()
        self._cache: dict[str, bool] = {}
        if config.cache_path and os.path.exists(config.cache_path):
            with open(config.cache_path) as f:
                self._cache = {k: bool(v) for k, v in json.load(f).items()}
        self.stats = {"requests": 0, "cache_hits": 0, "failures": 0, "fallbacks": 0}

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.config.model, prompt]).encode()).hexdigest()

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _ask(self, prompt: str) -> bool | None:
        key = self._key(prompt)
        with self._lock:
            if key in self._cache:
                self.stats["cache_hits"] += 1
                return self._cache[key]
        self._count("requests")
        try:
            reply = self._client.chat.completions.create(
                model=self.config.model, messages=[{"role": "user", "content": prompt}],
                temperature=self.config.temperature, max_tokens=self.config.max_tokens)
            text = reply.choices[0].message.content
            verdict = parse_verdict(text)
            if verdict is None:
                raise ValueError(f"reply {text!r} is neither 1 nor 0")
        except Exception as e:  # noqa: BLE001 - any failure is reported or falls back, as configured
            self._count("failures")
            if not self.config.fallback_to_rules:
                raise JudgeUnavailable(f"judge at {self.config.base_url} (model {self.config.model!r}) "
                                       f"gave no verdict: {type(e).__name__}: {e}") from e
            self._count("fallbacks")
            return None
        with self._lock:
            self._cache[key] = verdict
        return verdict

    def verdicts(self, queries: Sequence[tuple[str, str, object]]) -> list[bool | None]:
        """Verdicts for (question, prediction, ground_truth) triples, asked concurrently."""
        prompts = [self.config.prompt.format(question=q, prediction=p, ground_truth=" or ".join(ground_truths(g)))
                   for q, p, g in queries]
        unique = list(dict.fromkeys(prompts))
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.concurrency, len(unique)))) as pool:
            answers = dict(zip(unique, pool.map(self._ask, unique)))
        self._save()
        return [answers[p] for p in prompts]

    def verdict(self, question: str, prediction: str, ground_truth) -> bool | None:
        return self.verdicts([(question, prediction, ground_truth)])[0]

    def _save(self) -> None:
        if not self.config.cache_path:
            return
        with self._lock:
            data = dict(self._cache)
        tmp = f"{self.config.cache_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.config.cache_path)
