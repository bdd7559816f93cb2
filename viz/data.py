"""Plain-Python views of a Trace: one cycle's nodes, the output tokens, the tested nodes.

Nothing here draws; `tree_figure` and `charts` turn these records into Plotly figures, and the
tests check them without a browser.

Vocabulary (per cycle):
  candidate  a token proposed during expansion (ids in creation order)
  kept       a candidate the rerank put in the draft tree; the others are "dropped"
  status     root / accepted / rejected / unreached (from verification), dropped (not in the
             tree) or bonus (the target's own token after the accepted path)
  tested     a node whose parent was accepted: the target actually compared it (accepted or
             rejected); "unreached" nodes hang below a rejected node and were never tested
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from eagle2.trace import CycleRecord, Trace

ROOT_KEY = -1
BONUS_KEY = -2
_NODE_KEY_BASE = 10**7  # keys of tree nodes that have no expansion record (e.g. user policies)

STATUSES = ("root", "accepted", "rejected", "unreached", "dropped", "bonus")


def display_token(text: str, limit: int = 18) -> str:
    """A token's text made visible: a leading space as '␣', newlines as '⏎', tabs as '⇥'."""
    if text is None:
        return "?"
    out = text.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "")
    if out.startswith(" "):
        out = "␣" + out[1:]
    if out == "":
        out = "∅"
    if len(out) > limit:
        out = out[: limit - 1] + "…"
    return out


@dataclass
class CycleNode:
    """One node of a cycle view: a candidate (kept or dropped), the root, or the bonus token."""

    key: int  # candidate id; ROOT_KEY / BONUS_KEY; _NODE_KEY_BASE + node without a candidate record
    token: int
    text: str
    parent: int | None  # key of the parent, None for the root
    depth: int
    confidence: float = 1.0  # draft probability given the parent
    value: float = 1.0  # product of confidences from the root
    step: int = 0  # expansion step that created it
    sibling_rank: int = 1  # 1 = the drafter's top choice under its parent
    value_rank: int = 0  # 1 = most valuable candidate of the cycle (0 for root/bonus)
    kept: bool = True
    chosen_step: int | None = None  # expansion step at which it was chosen to be expanded
    status: str = "unreached"
    node: int | None = None  # index in the draft tree (None when dropped / bonus)
    source: str = "draft"  # "draft" (the drafter proposed it; "both" when a copy shared it) or "lookup"
    target_prob: float | None = None
    target_top_token: int | None = None
    target_top_text: str | None = None
    target_top_prob: float | None = None


@dataclass
class CycleView:
    index: int
    nodes: dict[int, CycleNode] = field(default_factory=dict)  # key -> node, parents first
    steps: list[dict] = field(default_factory=list)  # per expansion step: step, new, chosen, frontier
    cutoff_value: float | None = None
    total_candidates: int = 0
    accepted: int = 0  # drafted tokens accepted
    new_tokens: int = 0
    bonus_token: int | None = None
    tree_size: int = 0  # drafted nodes in the tree
    timings: dict = field(default_factory=dict)
    sampled_drafts: bool = False  # children drawn from the drafter (T > 0), not its top-k

    @property
    def depth(self) -> int:
        return max((n.depth for n in self.nodes.values() if n.status != "bonus"), default=0)

    def by_status(self, status: str) -> list[CycleNode]:
        return [n for n in self.nodes.values() if n.status == status]


def cycle_count(trace: Trace) -> int:
    return len(trace.cycles)


def _cycle(trace: Trace, index: int) -> CycleRecord:
    if not trace.cycles:
        raise ValueError("this trace has no drafting cycles (the answer ended at the first token)")
    if not 0 <= index < len(trace.cycles):
        raise ValueError(f"cycle {index} does not exist (0..{len(trace.cycles) - 1})")
    return trace.cycles[index]


def cycle_view(trace: Trace, index: int) -> CycleView:
    """Every candidate of a cycle with its fate: kept/dropped, then accepted/rejected/unreached."""
    rec = _cycle(trace, index)
    view = CycleView(index=index, new_tokens=len(rec.new_tokens),
                     timings={"draft_s": rec.timings.draft_s, "verify_s": rec.timings.verify_s,
                              "update_s": rec.timings.update_s},
                     sampled_drafts=trace.meta.get("drafts") == "sampled")
    text = trace.text_of
    root_token = rec.root_token
    if rec.verification and rec.verification.nodes:
        root_token = rec.verification.nodes[0].token
    view.nodes[ROOT_KEY] = CycleNode(ROOT_KEY, root_token, text(root_token), None, 0, status="root", node=0,
                                     value_rank=0)

    # 1. candidates from the expansion records
    cands = {}
    chosen_at: dict[int, int] = {}
    for e in rec.expansions:
        for c in e.candidates:
            cands[c.id] = (c, e.step)
        for cid in e.chosen:
            chosen_at.setdefault(cid, e.step)
        view.steps.append({"step": e.step, "new": [c.id for c in e.candidates], "chosen": list(e.chosen),
                           "frontier": list(e.frontier),
                           "lookup": bool(e.candidates) and all(c.source == "lookup" for c in e.candidates)})
    if rec.rerank:
        kept = set(rec.rerank.kept)
    elif rec.verification:  # a policy that reports no rerank: the tree's nodes are what it kept
        kept = {n.candidate for n in rec.verification.nodes[1:]}
    else:
        kept = set(cands)
    if rec.rerank:
        view.cutoff_value = rec.rerank.cutoff_value
        view.total_candidates = rec.rerank.total_candidates
    else:
        view.total_candidates = len(cands)
    siblings: dict[int, list] = {}
    for cid, (c, _) in cands.items():
        siblings.setdefault(c.parent, []).append(c)
    sib_rank = {}
    for group in siblings.values():
        for r, c in enumerate(sorted(group, key=lambda c: (-c.confidence, c.id)), start=1):
            sib_rank[c.id] = r
    value_rank = {c.id: r for r, c in enumerate(
        sorted((c for c, _ in cands.values()), key=lambda c: (-c.value, c.id)), start=1)}
    for cid in sorted(cands):
        c, step = cands[cid]
        parent = c.parent if c.parent in cands else ROOT_KEY
        view.nodes[cid] = CycleNode(cid, c.token, text(c.token), parent, c.depth, c.confidence, c.value, step,
                                    sib_rank[cid], value_rank[cid], cid in kept, chosen_at.get(cid),
                                    "unreached" if cid in kept else "dropped", source=c.source)

    # 2. the target's verdict on the tree nodes
    ver = rec.verification
    if ver is not None:
        node_key = {0: ROOT_KEY}
        for vn in ver.nodes[1:]:
            key = vn.candidate if vn.candidate in view.nodes and vn.candidate >= 0 else _NODE_KEY_BASE + vn.node
            node_key[vn.node] = key
            if key not in view.nodes:  # a policy that reports no expansion: build from the tree
                parent_key = node_key.get(vn.parent, ROOT_KEY)
                pv = view.nodes[parent_key].value if parent_key in view.nodes else 1.0
                view.nodes[key] = CycleNode(key, vn.token, text(vn.token), parent_key, vn.depth,
                                            vn.draft_value / pv if pv > 0 else 0.0, vn.draft_value, vn.depth)
            n = view.nodes[key]
            n.node, n.kept, n.status = vn.node, True, vn.status
            n.target_prob = vn.target_prob
            n.target_top_token, n.target_top_prob = vn.target_top_token, vn.target_top_prob
            n.target_top_text = text(vn.target_top_token)
        root = view.nodes[ROOT_KEY]
        root.target_top_token, root.target_top_prob = ver.nodes[0].target_top_token, ver.nodes[0].target_top_prob
        root.target_top_text = text(ver.nodes[0].target_top_token)
        _rank_missing(view)
        view.accepted = max(0, len(ver.accepted_path) - 1)
        view.tree_size = len(ver.nodes) - 1
        view.bonus_token = ver.bonus_token
        last = node_key.get(ver.accepted_path[-1], ROOT_KEY) if ver.accepted_path else ROOT_KEY
        # the bonus is emitted unless the answer stopped on an accepted draft (EOS / budget)
        if view.new_tokens == 0 or view.new_tokens > view.accepted:
            lastn = view.nodes[last]
            view.nodes[BONUS_KEY] = CycleNode(
                BONUS_KEY, ver.bonus_token, text(ver.bonus_token), last, lastn.depth + 1, status="bonus",
                target_prob=lastn.target_top_prob if ver.bonus_token == lastn.target_top_token else None,
                target_top_token=lastn.target_top_token, target_top_text=lastn.target_top_text,
                target_top_prob=lastn.target_top_prob)
    else:
        view.tree_size = len(kept)
    return view


def _rank_missing(view: CycleView) -> None:
    """Sibling / value ranks for nodes built from the tree alone."""
    loose = [n for n in view.nodes.values() if n.key >= _NODE_KEY_BASE]
    if not loose:
        return
    groups: dict[int, list[CycleNode]] = {}
    for n in loose:
        groups.setdefault(n.parent, []).append(n)
    for g in groups.values():
        for r, n in enumerate(sorted(g, key=lambda n: (-n.confidence, n.key)), start=1):
            n.sibling_rank = r
    for r, n in enumerate(sorted(loose, key=lambda n: (-n.value, n.key)), start=1):
        n.value_rank = r


# ---- tokens of the answer --------------------------------------------------------------------
@dataclass
class TokenSpan:
    token: int
    text: str
    origin: str  # "draft" (accepted draft token), "copy" (accepted, copied by prompt lookup) or "target"
    cycle: int  # -1 = the prefill's token


def token_spans(trace: Trace) -> list[TokenSpan]:
    """The answer's tokens with their origin and cycle, rebuilt from the trace."""
    spans = []
    if trace.first_token is not None:
        spans.append(TokenSpan(trace.first_token, trace.text_of(trace.first_token), "target", -1))
    for rec in trace.cycles:
        origins = accepted_origins(rec)
        for i, tok in enumerate(rec.new_tokens):
            spans.append(TokenSpan(tok, trace.text_of(tok), origins[i] if i < len(origins) else "target", rec.index))
    return spans


def accepted_origins(rec) -> list[str]:
    """Per accepted draft token of a cycle: "copy" when prompt lookup alone proposed it, else "draft"."""
    ver = rec.verification
    if ver is None or len(ver.accepted_path) < 2:
        return []
    copied = {c.id for s in rec.expansions for c in s.candidates if c.source == "lookup"}
    return ["copy" if ver.nodes[i].candidate in copied else "draft" for i in ver.accepted_path[1:]]


# ---- whole-generation statistics ---------------------------------------------------------------
@dataclass
class Tested:
    """A node the target compared with its own choice (its parent was accepted)."""

    cycle: int
    depth: int
    sibling_rank: int
    confidence: float
    value: float
    accepted: bool


def tested_nodes(trace: Trace, include_unreached: bool = False) -> list[Tested]:
    """Nodes the target tested; with include_unreached, every verified draft node (one under a
    rejected parent counts as not accepted: what a node's value predicts)."""
    statuses = ("accepted", "rejected", "unreached") if include_unreached else ("accepted", "rejected")
    out = []
    for i in range(len(trace.cycles)):
        if trace.cycles[i].verification is None:
            continue
        view = cycle_view(trace, i)
        for n in view.nodes.values():
            if n.status in statuses:
                out.append(Tested(i, n.depth, n.sibling_rank, n.confidence, n.value, n.status == "accepted"))
    return out


def per_cycle(trace: Trace) -> list[dict]:
    """One row per cycle: accepted drafts, emitted tokens, tree size, timings."""
    rows = []
    for rec in trace.cycles:
        ver = rec.verification
        acc = max(0, len(ver.accepted_path) - 1) if ver else 0
        rows.append({"cycle": rec.index, "accepted": acc, "new_tokens": len(rec.new_tokens),
                     "tree_size": (len(ver.nodes) - 1) if ver else 0,
                     "draft_s": rec.timings.draft_s, "verify_s": rec.timings.verify_s,
                     "update_s": rec.timings.update_s})
    return rows


def summary(trace: Trace) -> dict:
    """τ, tokens/s and the time split, from the trace summary (or recomputed when missing)."""
    s = dict(trace.summary or {})
    rows = per_cycle(trace)
    new = len(trace.output_tokens)
    s.setdefault("new_tokens", new)
    s.setdefault("cycles", len(rows))
    s.setdefault("tau", round(new / (1 + len(rows)), 4) if new else 0.0)
    s.setdefault("mean_accepted", round(sum(r["new_tokens"] for r in rows) / max(1, len(rows)), 4))
    for k in ("draft_s", "verify_s", "update_s"):
        s.setdefault(k, round(sum(r[k] for r in rows), 4))
    s.setdefault("prefill_s", 0.0)
    if "seconds" not in s:
        s["seconds"] = round(s["prefill_s"] + s["draft_s"] + s["verify_s"] + s["update_s"], 4)
    if "tokens_per_s" not in s:
        s["tokens_per_s"] = round(new / s["seconds"], 3) if s["seconds"] else 0.0
    return s


def policy_label(meta: dict) -> str:
    p = meta.get("policy", "?")
    sizes = [f"{k}={meta[k]}" for k in ("top_k", "depth", "total_tokens") if k in meta]
    if meta.get("lookup"):
        sizes.append(f"lookup={meta['lookup']}")
    if meta.get("drafts") == "sampled":
        temp = meta.get("draft_temperature")  # drawn from the drafter at this share of T
        shown = isinstance(temp, (int, float)) and temp != 1
        sizes.append("sampled drafts" + (f" at {temp:g}·T" if shown else ""))
    return f"{p} ({', '.join(sizes)})" if sizes else str(p)


def safe_log10(x: float, floor: float = 1e-6) -> float:
    return math.log10(max(float(x), floor))
