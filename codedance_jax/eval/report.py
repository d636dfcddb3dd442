"""report.html: the summary, then every item with its input image, each assistant turn (text,
the code it ran, the tool's output and images), the answer and the verdict. Buttons filter by
correct / wrong / used tools (also from the URL: report.html#filter=wrong). Images are embedded
as data URIs, so the single file works offline and can be mailed around."""
from __future__ import annotations

import base64
import html
import json
import os

from codedance_jax.eval import summary as summary_lib

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222}
table.summary td{padding:1px 10px;border-bottom:1px solid #eee;font-family:monospace}
.filters button{margin-right:.4em;padding:.3em .8em}.filters button.on{background:#333;color:#fff}
.item{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.6em 1em}
.item.correct{border-left:6px solid #2a2}.item.wrong{border-left:6px solid #c33}
.item.skipped{border-left:6px solid #999}
.hidden{display:none}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.5em;margin:.3em 0}
pre.code{background:#eef3ff}pre.out{background:#f3fff0}pre.err{background:#fff0f0}
img{max-width:100%;max-height:420px;border:1px solid #ddd;margin:.3em .3em 0 0}
.meta{color:#555;font-size:.9em}.verdict{font-weight:bold}
"""

SCRIPT = """
window.onerror = function (message) {
  var box = document.getElementById('js-errors');
  box.textContent += message + '\\n';
  box.className = '';
};
function applyFilter(name) {
  var shown = 0;
  document.querySelectorAll('.item').forEach(function (el) {
    var keep = name === 'all' || (name === 'correct' && el.dataset.correct === '1') ||
               (name === 'wrong' && el.dataset.correct === '0') || (name === 'tools' && el.dataset.tools === '1');
    el.classList.toggle('hidden', !keep);
    if (keep) shown += 1;
  });
  document.querySelectorAll('.filters button').forEach(function (b) {
    b.classList.toggle('on', b.dataset.filter === name);
  });
  document.getElementById('shown-count').textContent = shown;
  document.body.dataset.filter = name;
}
document.querySelectorAll('.filters button').forEach(function (b) {
  b.addEventListener('click', function () { applyFilter(b.dataset.filter); });
});
var requested = (location.hash.match(/filter=(\\w+)/) || [])[1];
applyFilter(['all', 'correct', 'wrong', 'tools'].indexOf(requested) >= 0 ? requested : 'all');
document.body.dataset.ready = '1';
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _image(out_dir: str, relative: str | None, alt: str) -> str:
    if not relative:
        return ""
    path = os.path.join(out_dir, relative)
    if not os.path.exists(path):
        return f'<p class="meta">(image {_esc(relative)} is missing)</p>'
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img alt="{_esc(alt)}" src="data:image/jpeg;base64,{data}">'


def _turn(out_dir: str, number: int, turn: dict) -> str:
    text, tool = turn["text"], turn.get("tool")
    parts = [f'<div class="turn"><div class="meta">assistant turn {number + 1}</div>']
    code = tool.get("code") if tool else None
    if code and code in text:  # show the code apart from the reasoning around it
        before, after = text.split(code, 1)
        parts += [f"<pre>{_esc(before)}</pre>", f'<pre class="code">{_esc(code)}</pre>']
        if after.strip():
            parts.append(f"<pre>{_esc(after)}</pre>")
    else:
        parts.append(f"<pre>{_esc(text)}</pre>")
    if tool:
        parts.append(f'<div class="meta">tool call: <b>{_esc(tool["outcome"])}</b> ({tool["duration_s"]} s)</div>')
        if tool.get("error"):
            parts.append(f'<pre class="err">{_esc(tool["error"])}</pre>')
        if tool.get("stdout"):
            parts.append(f'<pre class="out">{_esc(tool["stdout"])}</pre>')
        if tool.get("stderr"):
            parts.append(f'<pre class="err">{_esc(tool["stderr"])}</pre>')
        parts += [_image(out_dir, path, f"tool image {k + 1}") for k, path in enumerate(tool.get("images", []))]
        parts += [f'<div class="meta">{_esc(note)}</div>' for note in tool.get("notes", [])]
    return "".join(parts) + "</div>"


def _item(out_dir: str, record: dict) -> str:
    skipped = "skipped" in record
    correct = bool(record.get("correct"))
    used_tools = record.get("tool_calls", 0) > 0
    state = "skipped" if skipped else "correct" if correct else "wrong"
    head = (f'<div><b>{_esc(record["id"])}</b> <span class="verdict">'
            f'{"skipped" if skipped else "✓ correct" if correct else "✗ wrong"}</span>')
    if not skipped:
        head += (f' <span class="meta">decided by {_esc(record.get("decided_by"))}; {record.get("num_turns", 0)} turns, '
                 f'{record.get("tool_calls", 0)} tool calls, {record.get("generated_tokens", 0)} generated tokens; '
                 f'finished: {_esc(record.get("finish_reason"))} {_esc(record.get("finish_detail"))}</span>')
    body = [head + "</div>", f"<pre>{_esc(record.get('question'))}</pre>",
            _image(out_dir, record.get("input_image"), "input image")]
    if skipped:
        body.append(f'<pre class="err">{_esc(record["skipped"])}</pre>')
    body += [_turn(out_dir, k, turn) for k, turn in enumerate(record.get("turns", []))]
    body.append(f'<div>answer: <b>{_esc(record.get("extracted"))}</b> &nbsp; gold: <b>{_esc(json.dumps(record.get("gold"), ensure_ascii=False))}</b></div>')
    return (f'<section class="item {state}" data-correct="{int(correct)}" data-tools="{int(used_tools)}" '
            f'id="item-{_esc(record["id"])}">' + "".join(body) + "</section>")


def render(summary: dict, records: list[dict], out_dir: str) -> str:
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in summary_lib.rows(summary))
    counts = {"all": len(records), "correct": sum(bool(r.get("correct")) for r in records),
              "wrong": sum("skipped" not in r and not r.get("correct") for r in records),
              "tools": sum(r.get("tool_calls", 0) > 0 for r in records)}
    labels = {"all": "All", "correct": "Correct", "wrong": "Wrong", "tools": "Used tools"}
    buttons = "".join(f'<button data-filter="{k}">{labels[k]} ({counts[k]})</button>' for k in labels)
    skips = "".join(f"<li>{_esc(s)}</li>" for s in summary.get("skips", []))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_esc(summary["benchmark"])} evaluation</title>'
            f"<style>{STYLE}</style></head><body>"
            f'<h1>{_esc(summary["benchmark"])}: {summary.get("overall", 0):.2f}</h1>'
            f'<table class="summary">{rows}</table>'
            + (f"<details><summary>{summary['skipped']} skipped</summary><ul>{skips}</ul></details>" if skips else "")
            + f'<pre id="js-errors" class="hidden"></pre>'
            f'<p class="filters">{buttons} <span class="meta">showing <span id="shown-count">{len(records)}</span></span></p>'
            + "".join(_item(out_dir, r) for r in records)
            + f"<script>{SCRIPT}</script></body></html>")


def write(path: str, summary: dict, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(summary, records, os.path.dirname(os.path.abspath(path))))
