"""Is the draft value a good guess of acceptance? EAGLE-2's premise, measured.

EAGLE-2 grows and prunes its tree by *value*, the product of the draft confidences along a
node's path, because that product approximates the chance that the target accepts the whole
path up to the node. `AcceptanceTally` watches a decode and keeps, for every drafted node,
its value, its own confidence and what the target did with it; `table` bins them:

- by value: all drafted nodes, acceptance = the node ended on the accepted path;
- by confidence: nodes the target actually tested (their parent was accepted), acceptance =
  the target agreed with this token (the paper's confidence-vs-acceptance figure).

A calibrated head puts every bin near the diagonal (rate ≈ mean value).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .trace import Observer, Verification

BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class NodeOutcome:
    value: float  # product of draft confidences along the path
    confidence: float  # draft probability of this token given its parent
    status: str  # "accepted", "rejected" (parent accepted, token not) or "unreached"


class AcceptanceTally(Observer):
    """Collects a `NodeOutcome` per drafted node of every verified tree."""

    def __init__(self) -> None:
        self.nodes: list[NodeOutcome] = []

    def on_verify(self, cycle: int, verification: Verification) -> None:
        nodes = verification.nodes
        for n in nodes[1:]:
            parent_value = nodes[n.parent].draft_value if n.parent > 0 else 1.0
            conf = n.draft_value / parent_value if parent_value > 0 else 0.0
            self.nodes.append(NodeOutcome(n.draft_value, min(conf, 1.0), n.status))

    def table(self, by: str = "value", bins: tuple[float, ...] = BINS) -> list[dict]:
        return table(self.nodes, by, bins)


def table(nodes: list[NodeOutcome], by: str = "value", bins: tuple[float, ...] = BINS) -> list[dict]:
    """Rows {lo, hi, n, mean, rate}: nodes binned by `by` ("value" or "confidence"), the mean of
    that quantity in the bin and the measured acceptance rate; empty bins are left out."""
    if by not in ("value", "confidence"):
        raise ValueError(f"by must be 'value' or 'confidence', got {by!r}")
    pool = nodes if by == "value" else [n for n in nodes if n.status != "unreached"]
    return binned_rates([(getattr(n, by), n.status == "accepted") for n in pool], bins)


def binned_rates(pairs: list[tuple[float, bool]], bins: tuple[float, ...] = BINS) -> list[dict]:
    """(x, accepted) pairs binned by x (a bin holds lo <= x < hi; x outside the edges goes to the
    nearest end bin): rows {lo, hi, n, mean, rate} for the non-empty bins."""
    groups: dict[int, list[tuple[float, bool]]] = {}
    for x, hit in pairs:
        i = bisect.bisect_right(bins, x) - 1
        groups.setdefault(min(max(i, 0), len(bins) - 2), []).append((x, hit))
    return [{"lo": bins[i], "hi": bins[i + 1], "n": len(g), "mean": sum(x for x, _ in g) / len(g),
             "rate": sum(hit for _, hit in g) / len(g)} for i, g in sorted(groups.items())]


def format_table(rows: list[dict], by: str = "value") -> str:
    """Markdown: bin, nodes, mean draft value (or confidence), measured acceptance."""
    lines = [f"| draft {by} | nodes | mean {by} | accepted |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['lo']:.2f}–{r['hi']:.2f} | {r['n']} | {r['mean']:.3f} | {r['rate']:.3f} |")
    return "\n".join(lines)
