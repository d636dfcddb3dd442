"""Symbolic equality through math-verify (`from math_verify import parse, verify`).

math-verify bounds its own time with SIGALRM, which Python allows only in the main thread; called
from any other thread (a scoring pool, the judge's workers) it raises. So in the main thread its
timeouts stay on (TIMEOUT_S), elsewhere they are off and the input length bound (MAX_CHARS) is what
keeps sympy from stalling on an adversarial answer. A bare answer ("x+1", "\\frac12") is read as
LaTeX math by wrapping it in `$...$`; text that already has `$` or `\\boxed` is parsed as it is.
math-verify is imported on first use: it pulls in sympy, which the rest of rewards does not need.
Results are cached by (prediction, ground truth).
"""
from __future__ import annotations

import functools
import threading

TIMEOUT_S = 5
MAX_CHARS = 500


def _parse(text: str, timeout: int | None):
    from math_verify import parse
    if "$" not in text and "\\boxed" not in text:
        text = f"${text}$"
    return parse(text, parsing_timeout=timeout)


@functools.lru_cache(maxsize=1 << 16)  # a GRPO group often repeats an answer; parsing dominates
def math_equal(prediction: str, ground_truth: str) -> bool:
    """True when math-verify finds the prediction equal to the ground truth."""
    from math_verify import verify
    if len(prediction) > MAX_CHARS or len(ground_truth) > MAX_CHARS:
        return False
    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold, pred = _parse(ground_truth, timeout), _parse(prediction, timeout)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))


@functools.lru_cache(maxsize=1 << 12)
def numeric_value(text: str) -> float | None:
    """The real number `text` denotes ("\\sqrt{2}", "\\frac{3}{4}", "2\\pi"), else None."""
    if len(text) > MAX_CHARS:
        return None
    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    for expr in _parse(text, timeout):
        if getattr(expr, "is_number", False):
            try:
                return float(expr.evalf())
            except (TypeError, ValueError):  # complex, or not a finite real
                return None
    return None
