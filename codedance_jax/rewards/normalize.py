"""Text and number normalisation shared by every matching rule (rewards and benchmark scoring).

- `normalize_text(s)`: lower case; punctuation becomes space except `.`/`,` between two digits
  ("3.5" stays); the articles a / an / the dropped as words unless nothing else is left; whitespace
  collapsed.
- `parse_number(s)`: the value of a string that is one number, optionally with a currency sign, an
  approximation sign, thousands commas ("1,234"), a percent sign or the word percent ("45%" is 45),
  a simple fraction ("3/4"), or one trailing unit word ("12 cm", "45 degrees", "3 apples");
  None for anything else ("2 or 3", "1,23", "abc"). Only a whole-string number counts, so "10"
  never yields 1.
- `numbers_match(a, b, rel_tol)`: equal within a relative tolerance; a percent may also be read as
  a fraction ("45%" matches "0.45" and "45"). DEFAULT_REL_TOL = 1e-4: it absorbs float formatting
  (0.30000000000000004, 3.14159 vs 3.1416) but not a misreading, and keeps integer answers
  below 10^4 exact. Benchmarks with their own rule pass theirs (ChartQA relaxed accuracy 0.05, CountBench 0).
"""
from __future__ import annotations

import math
import re

DEFAULT_REL_TOL = 1e-4

_PUNCT = re.compile(r"(?<!\d)[^\w\s]|[^\w\s](?!\d)|_")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NUMBER = re.compile(
    r"""^[~≈]?\s*(?P<sign>[-+−])?\s*[$€£¥]?\s*
    (?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?P<exp>[eE][-+]?\d+)?
    (?:\s*/\s*(?P<den>\d+))?
    \s*(?P<pct>%|percent\b)?
    \s*(?P<unit>[^\W\d_][\w°²³^/.]*|°[A-Za-z]?)?\.?$""",
    re.VERBOSE)


def normalize_text(text: str) -> str:
    text = _PUNCT.sub(" ", str(text).lower())
    without_articles = _ARTICLES.sub(" ", text)
    if without_articles.strip():
        text = without_articles
    return " ".join(text.split())


def _number(text) -> tuple[float, bool] | None:
    """(value as written, written as a percent) of a whole-string number, else None."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return (float(text), False) if math.isfinite(text) else None
    m = _NUMBER.match(str(text).strip())
    if m is None or (m["den"] and (m["exp"] or "." in m["num"] or "," in m["num"])):
        return None
    value = float(m["num"].replace(",", "") + (m["exp"] or ""))
    if m["den"]:
        if int(m["den"]) == 0:
            return None
        value /= int(m["den"])
    if m["sign"] in ("-", "−"):
        value = -value
    return (value, bool(m["pct"])) if math.isfinite(value) else None


def parse_number(text) -> float | None:
    """The number a string (or int/float) states, or None; "45%" gives 45.0."""
    parsed = _number(text)
    return None if parsed is None else parsed[0]


def _readings(parsed: tuple[float, bool]) -> tuple[float, ...]:
    value, percent = parsed
    return (value, value / 100) if percent else (value,)


def numbers_match(a, b, rel_tol: float = DEFAULT_REL_TOL) -> bool:
    """True when strings (or numbers) `a` and `b` state the same number within `rel_tol` of `b`."""
    pa, pb = _number(a), _number(b)
    if pa is None or pb is None:
        return False
    return any(abs(x - y) <= rel_tol * abs(y) for x in _readings(pa) for y in _readings(pb))
