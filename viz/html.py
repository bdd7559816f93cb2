"""HTML pieces for the app: the answer's tokens coloured by origin, and summary cards.

Each cycle's tokens sit in one `<span class="tl-cyc" data-cycle="i">`: the app's click handler
reads `data-cycle` to select that cycle. Styles are in CSS (see `CSS`), so the HTML stays small.
"""

from __future__ import annotations

import html

from eagle2.trace import Trace

from . import style
from .data import TokenSpan, policy_label, summary, token_spans

CSS = f"""
.tl-answer {{ font-family: {style.MONO}; font-size: 17px; line-height: 2.05; white-space: pre-wrap;
  word-break: break-word; padding: 10px 12px; border: 1px solid #d0d7de; border-radius: 8px; background: #fff;
  min-height: 90px; color: {style.INK}; }}
.tl-answer .tl-empty {{ color: #8c959f; font-family: {style.FONT}; font-size: 15px; }}
.tl-cyc {{ cursor: pointer; border-right: 2px solid #8c959f; padding: 3px 1px; margin-right: 3px;
  border-radius: 3px; }}
.tl-cyc:hover {{ background: #f3f4f6; }}
.tl-cyc.tl-sel {{ outline: 3px solid {style.INK}; outline-offset: 1px; background: #fff8c5; }}
.tl-cyc.tl-prefill {{ border-right-style: dotted; }}
.tl-tok {{ border-radius: 3px; padding: 1px 0; }}
.tl-draft {{ background: {style.DRAFT_BG}; }}
.tl-target {{ background: {style.TARGET_BG}; }}
.tl-copy {{ background: {style.DRAFT_BG}; text-decoration: underline dashed {style.ACCEPTED}; text-underline-offset: 4px; }}
.tl-legend .tl-copy::before, .tl-answer .tl-copy.tl-first::before {{ content: "↪"; color: {style.ACCEPTED}; }}
.tl-special {{ color: #8c959f; font-size: 13px; }}
.tl-live::after {{ content: "▍"; color: {style.BONUS}; animation: tl-blink 1s steps(2) infinite; }}
@keyframes tl-blink {{ 50% {{ opacity: 0; }} }}
.tl-legend {{ font-family: {style.FONT}; font-size: 14px; color: #57606a; margin: 2px 0 6px; }}
.tl-legend .tl-tok {{ font-family: {style.MONO}; padding: 1px 5px; }}
.tl-legend .tl-bar {{ display: inline-block; width: 0; height: 16px; border-right: 2px solid #8c959f;
  vertical-align: middle; margin: 0 4px; }}
.tl-cards {{ display: flex; flex-wrap: wrap; gap: 10px; font-family: {style.FONT}; }}
.tl-card {{ flex: 1 1 120px; border: 1px solid #d0d7de; border-radius: 8px; padding: 8px 12px; background: #fff; }}
.tl-card .tl-num {{ font-size: 26px; font-weight: 650; color: {style.INK}; line-height: 1.2; }}
.tl-card .tl-lbl {{ font-size: 13px; color: #57606a; }}
.tl-card.tl-wide {{ flex: 2 1 240px; }}
.tl-card.tl-wide .tl-num {{ font-size: 18px; padding-top: 6px; }}
.tl-split {{ display: flex; height: 12px; border-radius: 6px; overflow: hidden; margin-top: 8px; }}
"""


def _tok_html(text: str, origin: str, token: int, cycle: int, first: bool = False) -> str:
    special = text.startswith("<|") and text.endswith("|>")
    shown = html.escape(text).replace("\n", "⏎\n")
    who = {"draft": "accepted draft token", "copy": "accepted draft token, copied from the context (prompt lookup)"
           }.get(origin, "target token (prefill)" if cycle < 0 else "target token (bonus)")
    cls = f"tl-tok tl-{origin}" + (" tl-special" if special else "") + (" tl-first" if first else "")
    return f'<span class="{cls}" title="{html.escape(repr(text))} · id {token} · {who}">{shown}</span>'


def legend_html() -> str:
    return ('<div class="tl-legend"><span class="tl-tok tl-draft">draft</span> accepted draft token &nbsp; '
            '<span class="tl-tok tl-copy">copy</span> copied from the context &nbsp; '
            '<span class="tl-tok tl-target">target</span> target token (prefill / bonus) &nbsp; '
            '<span class="tl-bar"></span> cycle boundary &nbsp;·&nbsp; click a cycle to see its tree</div>')


def tokens_html(spans: list[TokenSpan] | Trace | None, selected: int | None = None, live: bool = False,
                empty: str = "The answer appears here, token by token.") -> str:
    """The answer with every token coloured by origin, grouped by cycle (clickable)."""
    if isinstance(spans, Trace):
        spans = token_spans(spans)
    if not spans:
        return f'<div class="tl-answer"><span class="tl-empty">{html.escape(empty)}</span></div>'
    parts, cur, buf = [], None, []

    def flush():
        if buf:
            sel = " tl-sel" if cur == selected else ""
            pre = " tl-prefill" if cur is not None and cur < 0 else ""
            label = "prefill" if cur < 0 else f"cycle {cur}"
            parts.append(f'<span class="tl-cyc{sel}{pre}" data-cycle="{cur}" title="{label}">{"".join(buf)}</span>')

    prev = None
    for s in spans:
        if s.cycle != cur:
            flush()
            cur, buf = s.cycle, []
        buf.append(_tok_html(s.text, s.origin, s.token, s.cycle, first=s.origin == "copy" and prev != "copy"))
        prev = s.origin
    flush()
    live_cls = " tl-live" if live else ""
    return f'<div class="tl-answer{live_cls}">{"".join(parts)}</div>'


def summary_html(trace: Trace | None, note: str = "") -> str:
    """Cards: τ, tokens per cycle, tokens/s, time split, policy."""
    if trace is None:
        return ""
    s = summary(trace)
    total = s["draft_s"] + s["verify_s"] + s["update_s"]
    split = ""
    if total > 0:
        segs = [(s["draft_s"], "#6baed6", "draft"), (s["verify_s"], "#08306b", "verify"),
                (s["update_s"], "#bdbdbd", "update")]
        split = '<div class="tl-split">' + "".join(
            f'<div title="{n} {v / total:.0%}" style="width:{100 * v / total:.1f}%;background:{c}"></div>'
            for v, c, n in segs) + "</div>"
    meta = trace.meta or {}
    pol = policy_label({**meta, **{k: s[k] for k in ("policy", "top_k", "depth", "total_tokens") if k in s}})
    drafter = meta.get("drafter") or "–"
    temp = meta.get("temperature", 0.0) or 0.0
    mode = "greedy" if not temp else f"T={temp}, top-p={meta.get('top_p', 1.0)}"
    if meta.get("device"):
        mode += f" · on {meta['device']}"

    def card(num, lbl, extra="", wide=False):
        return (f'<div class="tl-card{" tl-wide" if wide else ""}"><div class="tl-num">{num}</div>'
                f'<div class="tl-lbl">{lbl}</div>{extra}</div>')

    pct = (lambda k: f"{100 * s[k] / total:.0f}%") if total else (lambda k: "–")
    cards = [
        card(f"{s['tau']:.2f}", "τ: tokens per target forward"),
        card(f"{s['mean_accepted']:.2f}", "tokens per drafting cycle"),
        card(f"{s['tokens_per_s']:.1f}", "tokens / second"),
        card(f"{s['new_tokens']}", f"tokens in {s['cycles']} cycles"),
        card(f"{pct('draft_s')} / {pct('verify_s')}", "time: draft / verify", split),
        card(html.escape(pol), f"drafter: {html.escape(str(drafter))} · {html.escape(mode)}"
             + (f" · {html.escape(note)}" if note else ""), wide=True),
    ]
    return f'<div class="tl-cards">{"".join(cards)}</div>'
