"""Prompt lookup as a second source of draft candidates, merged into the EAGLE-2 tree.

The draft head guesses; prompt lookup copies. When the newest tokens already occurred in the
context (a question quoted in the answer, code, a list, an extraction task), the tokens that
followed them last time are often what comes next, and a copy can run far deeper than the
head's confidence reaches. The two mix naturally in one tree, because verification accepts
whatever path the target agrees with:

    context ── NgramIndex.propose ──> chain c_1 .. c_L   (after the newest occurrence of the
                                                          longest suffix n-gram, n <= max_n)
    pool (EAGLE-2 expansion) + chains ── merge_chain ──> one candidate pool ── rerank ──> tree

A chain starts at the root; optionally (`anchors`) also at the few most valuable drafted
nodes, looking up context + the drafted path, so the head can guess the first words of a
quote and the context supply the rest. Off by default: on our own development questions it
lowered τ (docs/benchmarks.md; many anchored chains come from weak one-token matches).
`merge_chain` walks a chain down from its anchor: where the head already proposed
the same token under the same parent, that node is reused (its confidence becomes the larger
of the two estimates); otherwise a new node is added. Values stay products of confidences
along the path, so the rerank (and AutoEagle2's tokens-per-second choice) treats both sources
alike.

A copied token's confidence is its measured acceptance rate: `LookupRates` counts, per match
length n and chain position i, how often token i was accepted when it was verified with its
anchor and tokens 1..i-1 accepted. Rates differ a lot between contexts (an extraction answer
copies whole lines, a poem copies nothing), so each generation keeps its own counts, shrunk
towards the totals of earlier generations. Verification is unchanged, so the output stays
exactly the target's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import accumulate

import torch

from .tree import SOURCES, CandidatePool


class NgramIndex:
    """Where every n-gram (n <= max_n) of the context occurred, updated as tokens arrive."""

    def __init__(self, max_n: int = 3):
        if not isinstance(max_n, int) or max_n < 1:
            raise ValueError(f"max_n must be an int >= 1, got {max_n!r}")
        self.max_n = max_n
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], list[int]] = {}  # n-gram -> positions right after it

    def reset(self, tokens=()) -> None:
        self.tokens, self._after = [], {}
        self.extend(tokens)

    def extend(self, tokens) -> None:
        for t in tokens:
            self.tokens.append(int(t))
            end = len(self.tokens)
            for n in range(1, min(self.max_n, end) + 1):
                self._after.setdefault(tuple(self.tokens[end - n:end]), []).append(end)

    def propose(self, max_len: int, tail=()) -> tuple[int, list[int]]:
        """(n, chain): the up to `max_len` tokens that followed the newest earlier occurrence of
        the longest suffix n-gram of context + `tail` (drafted tokens not in the context yet);
        (0, []) when that suffix never occurred before."""
        seq = self.tokens[-self.max_n:] + list(tail) if tail else self.tokens
        end = len(self.tokens)
        for n in range(min(self.max_n, len(seq)), 0, -1):
            starts = self._after.get(tuple(seq[len(seq) - n:]), ())
            for start in reversed(starts):
                if start < end:  # something follows it (not the context's own suffix)
                    return n, self.tokens[start:start + max_len]
        return 0, []


class LookupRates:
    """Acceptance rate of lookup token i (given tokens 1..i-1 accepted), per match length n.

    rate = (accepted + strength * prior) / (tested + strength), where prior is the rate over
    earlier generations (itself starting from `initial`) and the counts are this generation's.
    """

    def __init__(self, max_n: int, max_len: int, initial: float = 0.5, strength: float = 4.0):
        self.max_n, self.max_len, self.initial, self.strength = max_n, max_len, initial, strength
        shape = lambda: [[0.0] * max_len for _ in range(max_n + 1)]  # noqa: E731
        self.past_acc, self.past_tested = shape(), shape()
        self.acc, self.tested = shape(), shape()

    def new_generation(self) -> None:
        for n in range(self.max_n + 1):
            for i in range(self.max_len):
                self.past_acc[n][i] += self.acc[n][i]
                self.past_tested[n][i] += self.tested[n][i]
                self.acc[n][i] = self.tested[n][i] = 0.0

    def rate(self, n: int, i: int) -> float:
        prior = (self.past_acc[n][i] + self.initial) / (self.past_tested[n][i] + 1.0)
        return (self.acc[n][i] + self.strength * prior) / (self.tested[n][i] + self.strength)

    def record(self, n: int, chain: list[int], kept: list[bool], accepted: list[int]) -> None:
        """Count one verification: chain tokens in the tree (`kept`) against the accepted drafts."""
        for i, tok in enumerate(chain):  # reaching i means tokens 1..i-1 were accepted
            if not kept[i]:
                break
            self.tested[n][i] += 1
            if i < len(accepted) and accepted[i] == tok:
                self.acc[n][i] += 1
            else:
                break


def merge_chain(pool: CandidatePool, chain: list[int], log_confs: list[float], anchor: int = -1,
                kept: set[int] | None = None) -> list[int]:
    """Add a chain below `anchor` (a pool id; -1 = the root) to the pool, sharing nodes the
    head proposed too.

    A shared node keeps the larger confidence; values are then recomputed along every path (a
    raised node lifts its subtree). Returns the pool ids of the chain's nodes, in order.

    With `kept` (sampled drafts: the drafted nodes already chosen for the tree) the chain shares
    only those and raises nothing: which drawn nodes are kept must not depend on their tokens,
    so the copies are only added below them, as fixed candidates (verify.sample_accept).
    """
    parents, tokens = pool.parents.tolist(), pool.tokens.tolist()
    shareable = None  # with `kept`: the kept drafted nodes and the copies of earlier chains
    if kept is not None:
        drafted = SOURCES.index("draft")
        shareable = {i for i, s in enumerate(pool.source.tolist()) if i in kept or s != drafted}
    children: dict[tuple[int, int], int] = {(p, t): i for i, (p, t) in enumerate(zip(parents, tokens))
                                            if shareable is None or i in shareable}
    confs = [min(0.0, float(lc)) for lc in log_confs]
    shared, parent = [], anchor
    for tok in chain:  # walk down the nodes the head proposed too
        node = children.get((parent, tok))
        if node is None:
            break
        shared.append(node)
        parent = node
    if shared and kept is None:
        ids = torch.tensor(shared, device=pool.device)
        copy = torch.tensor(confs[: len(shared)], device=pool.device)
        raise_ = copy > pool.log_conf[ids]
        if bool(raise_.any()):
            pool.log_conf[ids] = torch.maximum(pool.log_conf[ids], copy)
            pool.source[ids[raise_]] = SOURCES.index("both")  # drafted, but its confidence is now the copy's
            pool.revalue()
    rest = len(shared)
    new = pool.add_chain(parent, chain[rest:], confs[rest:len(chain)])
    return shared + new.tolist()


def chain_log_confs(rates: LookupRates, n: int, length: int, scale: float = 1.0) -> list[float]:
    """Log confidences of a chain from the measured rates (divided by the value scale the
    policy applies to all values, so that after scaling they read as rates again)."""
    return [min(0.0, math.log(max(rates.rate(n, i), 1e-6)) - math.log(scale)) for i in range(length)]


@dataclass
class Chain:
    """One copied chain of a cycle, hanging from the root or from a drafted node (its anchor)."""

    anchor: int  # pool id of the node it continues (-1 = the root)
    anchor_tokens: list[int]  # the drafted tokens from the root down to the anchor
    n: int  # length of the n-gram match that found it
    tokens: list[int]
    log_confs: list[float] = field(default_factory=list)  # from the rates, when it was proposed
    ids: list[int] = field(default_factory=list)  # pool ids once merged
    kept: list[bool] = field(default_factory=list)  # in the tree after the rerank


class PromptLookup:
    """Prompt lookup for one policy: the context's n-gram index, the learnt rates, and each
    cycle's chains: one from the root, and (anchors > 0) one from each of the `anchors` most
    valuable drafted nodes."""

    def __init__(self, max_len: int = 10, max_n: int = 3, anchors: int = 0):
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"the longest copied chain must be an int >= 1, got {max_len!r}")
        if not isinstance(anchors, int) or anchors < 0:
            raise ValueError(f"anchors must be an int >= 0, got {anchors!r}")
        self.max_len, self.anchors = max_len, anchors
        self.index = NgramIndex(max_n)
        self.rates = LookupRates(max_n, max_len)
        self.chains: list[Chain] = []

    def start(self, prompt_tokens) -> None:
        """A new generation: index its prompt; this generation's rates start from the prior."""
        self.index.reset(prompt_tokens)
        self.rates.new_generation()
        self.chains = []

    def extend(self, tokens) -> None:
        self.index.extend(tokens)

    def propose_root(self, scale: float) -> list[float]:
        """Find this cycle's chain from the root; returns its nodes' log values (for the
        policy's stop rule, before the head has drafted anything)."""
        self.chains = []
        n, tokens = self.index.propose(self.max_len)
        if not tokens:
            return []
        confs = chain_log_confs(self.rates, n, len(tokens), scale)
        self.chains.append(Chain(-1, [], n, tokens, confs))
        return list(accumulate(confs))

    def merge(self, pool: CandidatePool, scale: float, kept: set[int] | None = None) -> None:
        """Merge the root chain (from propose_root) and the anchored chains into the drafted pool
        (with `kept`, sampled drafts: below the drafted nodes chosen for the tree, see merge_chain)."""
        if self.anchors:
            source, values = pool.source.tolist(), pool.log_value.tolist()
            tokens, parents = pool.tokens.tolist(), pool.parents.tolist()
            drafted = [i for i in range(len(pool)) if source[i] == SOURCES.index("draft")
                       and (kept is None or i in kept)]
            for a in sorted(drafted, key=lambda i: -values[i])[: self.anchors]:
                path, i = [], a
                while i >= 0:
                    path.append(tokens[i])
                    i = parents[i]
                path.reverse()
                n, tokens = self.index.propose(self.max_len, tail=path)
                if tokens:
                    self.chains.append(Chain(a, path, n, tokens, chain_log_confs(self.rates, n, len(tokens), scale)))
        for c in self.chains:
            c.ids = merge_chain(pool, c.tokens, c.log_confs, c.anchor, kept)

    def mark_kept(self, candidate_ids) -> None:
        kept = set(candidate_ids)
        for c in self.chains:
            c.kept = [i in kept for i in c.ids]

    def learn(self, accepted: list[int]) -> None:
        """Count each chain whose anchor was accepted against the drafts accepted after it."""
        for c in self.chains:
            d = len(c.anchor_tokens)
            if c.kept and accepted[:d] == c.anchor_tokens:
                self.rates.record(c.n, c.tokens, c.kept, accepted[d:])
        self.chains = []
