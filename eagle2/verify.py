"""Acceptance: which drafted tokens the target agrees with. Pure functions on logits.

greedy  walk down from the root, following the child whose token is the target's argmax;
        the target's argmax at the last accepted node is the bonus token. Equals plain
        greedy decoding token for token.
sample  multi-candidate speculative sampling. With top-k drafts (EAGLE-2's rule) a node's
        children are fixed tokens, so at a node with target distribution p we try them in
        order: accept child x with probability p(x); otherwise set p(x) = 0, renormalise and
        try the next. With sampled drafts (`SampledDrafts`) the children were drawn without
        replacement from the drafter's distribution q, so child x is accepted with probability
        min(1, p(x) / q(x)); a rejection leaves p ← norm(max(p − q, 0)) and q without x
        (recursive rejection sampling); children copied by prompt lookup come after them,
        fixed tokens tried like top-k drafts against that residual. If every child fails, the
        bonus token is sampled from what is left. Either way each emitted token is exactly distributed as the target's
        (processed) distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import DraftTree

# Sampled drafts are drawn from the drafter's distribution at the sampling temperature times this:
# a draft head's q is a little flatter than the target's p, and a slightly sharper q overlaps p
# more (1 − TV(p, q) higher at every draft step; docs/benchmarks.md, session 19). Any q is exact.
DRAFT_TEMPERATURE = 0.9


@dataclass
class Verdict:
    path: list[int]  # accepted node indices, root first
    bonus: int  # the target's own next token after the path
    rejected: list[int]  # children of accepted nodes that the target turned down
    accepted: list[int]  # the tokens of path[1:] (the accepted drafts)


def check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    if not isinstance(temperature, (int, float)) or temperature != temperature or temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not isinstance(top_p, (int, float)) or not (0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"sampling top_k must be >= 0 (0 = off), got {top_k}")


def target_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """The distribution we sample from: temperature, then top-k, then top-p (nucleus), in fp32."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each token
        drop_sorted = before >= top_p  # keep the smallest prefix reaching top_p (top token always kept)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


class RowProbs:
    """target_probs of a tree's logits, one row at a time as sampling visits nodes: acceptance
    walks one root path, so the rows it never reaches (most of a tree) cost nothing. Each row is
    computed exactly as target_probs computes it over the whole tree."""

    def __init__(self, logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0):
        self.logits, self.settings = logits, (temperature, top_p, top_k)
        self._rows: dict[int, torch.Tensor] = {}

    def __getitem__(self, node: int) -> torch.Tensor:
        if node not in self._rows:
            self._rows[node] = target_probs(self.logits[node:node + 1], *self.settings)[0]
        return self._rows[node]

    def __len__(self) -> int:
        return self.logits.shape[0]

    def full(self) -> torch.Tensor:
        """Every row at once (for records)."""
        return target_probs(self.logits, *self.settings)


class SampledDrafts:
    """Children drawn from the drafter instead of its top-k, for sampling (T > 0).

    A high-entropy target spreads its mass: at T = 1 a top-k draft x is accepted with
    probability p(x), the mass the target happens to put on it, whereas a draft drawn from a q
    close to p is accepted with probability 1 − TV(p, q), much more often. Each
    expanded node's children are drawn without replacement from its processed draft
    distribution q (`draw_without_replacement`; the drafter's log-probs at the sampling
    temperature times `draft_temperature`, then the same top-k / top-p), and `sample_accept` accepts them by
    recursive rejection sampling with the q rows recorded here.

    Exactness needs every node's children, in the order they are tried, to be the first m of
    its draws, with m not depending on those draws (nor on what grows below them). So a
    child's value is its rank's share of q (the sorted top-k of q), not its own token's: a
    node's children are worth the same whichever tokens came out, values still fall along
    paths and among siblings, and a policy that keeps and expands by value (EAGLE-2's fixed
    top-k frontier and rerank; eagle2.autotree's monotone stop rules) never looks at a draw
    to decide whether to keep it.
    """

    def __init__(self, temperature: float, top_p: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None, draft_temperature: float = DRAFT_TEMPERATURE):
        self.settings = (temperature, top_p, top_k)
        self.generator = generator
        self.draft_temperature = draft_temperature
        self.begin()

    @property
    def draft_temperature(self) -> float:
        """q is the drafter's distribution at the sampling temperature × this (a policy may set it)."""
        return self._draft_temperature

    @draft_temperature.setter
    def draft_temperature(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"draft_temperature must be > 0, got {value!r}")
        self._draft_temperature = float(value)

    def begin(self) -> None:
        """A new cycle (the decode loop calls it): forget the q rows, pool ids start again."""
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def draw(self, logp: torch.Tensor, k: int, parents, token_ids: torch.Tensor | None = None):
        """k children per row of the drafter's log-probs, drawn without replacement (draw
        order); returns (log values by rank, target token ids) shaped like a top-k and records
        each row's q under its parent's pool id (`parents`, -1 = the root)."""
        temperature, top_p, top_k = self.settings
        q = target_probs(logp, temperature * self.draft_temperature, top_p, top_k)
        idx = draw_without_replacement(q, k, self.generator)
        log_rank = torch.topk(q, k, dim=-1).values.clamp_min(1e-30).log()
        rows = q.reshape(-1, q.shape[-1])
        for i, parent in enumerate(torch.as_tensor(parents).reshape(-1).tolist()):
            self._rows[parent] = (rows[i], token_ids)
        ids = token_ids.index_select(0, idx.reshape(-1)).view(idx.shape) if token_ids is not None else idx
        return log_rank, ids

    def q(self, candidate: int, vocab: int) -> torch.Tensor | None:
        """The q a pool candidate's children were drawn from, over the target's vocabulary
        (a fresh fp32 copy), or None when it has no drawn children."""
        if candidate not in self._rows:
            return None
        row, ids = self._rows[candidate]
        if ids is None:
            return row.float().clone()
        return torch.zeros(vocab, dtype=torch.float32, device=row.device).index_copy_(0, ids, row.float())


def sample_index(p: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One draw from p (1-D, unnormalised) by its inverse CDF: one cumsum and a binary search,
    on a CPU far cheaper than torch.multinomial over a large vocabulary (docs/benchmarks.md)."""
    cdf = p.float().cumsum(0)
    u = torch.rand((), generator=generator, device=p.device) * cdf[-1]
    return int(torch.searchsorted(cdf, u.reshape(1), right=True).clamp_max(p.shape[0] - 1))


def draw_without_replacement(q: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k indices per row of q (..., V), each drawn from what is left of q after the earlier ones
    (the same law as Gumbel-top-k, without a random number per vocabulary entry). A row with
    fewer than k tokens of mass ends in tokens of zero mass, which verification skips."""
    rows = q.reshape(-1, q.shape[-1]).float().clone()
    out = torch.empty(rows.shape[0], k, dtype=torch.long, device=q.device)
    for j in range(k):
        cdf = rows.cumsum(-1)
        u = torch.rand(rows.shape[0], 1, generator=generator, device=q.device) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).clamp_max_(q.shape[-1] - 1)
        out[:, j] = pick[:, 0]
        rows.scatter_(1, pick, 0.0)
    return out.view(*q.shape[:-1], k)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the last axis in fp32: the same indices (bf16/fp16 -> fp32 is exact, first
    maximum wins either way, as in HF generate, which upcasts too), and on a CPU several times
    faster than a half-precision argmax over a 49 k vocabulary. Taken as `max(-1).indices`,
    which is documented to return the first maximum too and on CPUs runs several times faster
    than torch's argmax over rows this long (docs/benchmarks.md, session 28)."""
    return (logits if logits.dtype == torch.float32 else logits.float()).max(dim=-1).indices


def greedy_accept(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """Longest path whose every token is the target's argmax after its parent, for all root
    paths at once: a node is reachable when it and all its ancestors match; the deepest
    reachable node ends the path (siblings carry distinct tokens, so it is unique). One
    device-to-host copy brings back the path, the rejected children and the bonus token."""
    n = len(tree)
    if n == 1:  # nothing drafted (vanilla decoding)
        return Verdict([0], int(argmax(logits[0])), [], [])
    best = argmax(logits)
    up = tree.parent_rows
    match = tree.tokens == best.index_select(0, up)
    match[0] = True
    anc = tree.ancestor_matrix()
    reach = (match[None, :] | ~anc).all(dim=-1)  # every ancestor (and the node) matches
    end = torch.argmax(torch.where(reach, tree.depths, -1)).reshape(1)
    on_path = anc.index_select(0, end)[0]
    rejected = on_path.index_select(0, up) & ~on_path
    rejected[0] = False
    host = torch.cat([on_path.long(), rejected.long(), tree.tokens, best[end].reshape(1)]).tolist()
    path = [i for i in range(n) if host[i]]
    return Verdict(path, host[-1], [i for i in range(n) if host[n + i]], [host[2 * n + i] for i in path[1:]])


def sample_accept(tree: DraftTree, probs, generator: torch.Generator | None = None,
                  drafts: SampledDrafts | None = None) -> Verdict:
    """Multi-candidate speculative sampling (probs: (N, V) processed, or a RowProbs that computes
    the rows it is asked for); `drafts` holds the q rows of sampled drafts (None: top-k drafts).

    A node may have both drawn children and copied ones (prompt lookup, fixed candidates):
    recursive rejection sampling tries the drawn ones, and the copied ones are then tried like
    top-k drafts against the residual, which is the target's distribution given that every
    drawn child failed, so the result stays exact. A copied token that was drawn and rejected
    there has no mass left in the residual (rejection needs p(x) < q(x), then p - q ≤ 0 at x),
    so whether such a duplicate is in the tree or not changes nothing."""
    tokens = tree.tokens.tolist()
    kids = tree.children()
    candidates = tree.candidate_ids if drafts is not None else None
    copied = tree.copied() if drafts is not None else None
    path, rejected, node = [0], [], 0
    while True:
        p, children = probs[node], kids[node]
        q = drafts.q(candidates[node], p.shape[-1]) if drafts is not None and children else None
        if q is None:
            outcome = _accept_fixed(p, children, tokens, generator)
        else:  # the drawn children in draw order, then the copied ones (fixed) against what is left of p
            drawn = [c for c in children if not copied[c]]
            outcome = _accept_drawn(p, q, drawn, tokens, generator)
            if not isinstance(outcome, int) and len(drawn) < len(children):
                outcome = _accept_fixed(outcome, [c for c in children if copied[c]], tokens, generator)
        if not isinstance(outcome, int):  # every child failed: the bonus comes from what is left of p
            rejected += children
            accepted_tokens = [tokens[i] for i in path[1:]]
            if float(outcome.sum()) <= 0:  # rounding left no mass: fall back to the target's top token
                return Verdict(path, int(probs[node].argmax()), rejected, accepted_tokens)
            return Verdict(path, sample_index(outcome, generator), rejected, accepted_tokens)
        rejected += children[:children.index(outcome)]
        path.append(outcome)
        node = outcome


def _rand(generator, device) -> float:
    return float(torch.rand((), generator=generator, device=device))


def _accept_fixed(p: torch.Tensor, children: list[int], tokens: list[int], generator):
    """Top-k drafts: the accepted child, or the residual distribution when all fail."""
    owned = False
    for c in children:
        x = tokens[c]
        px = float(p[x])
        if px > 0 and _rand(generator, p.device) < px:
            return c
        if px > 0:
            if not owned:
                p, owned = p.clone(), True
            p[x] = 0.0
            p /= p.sum().clamp_min(1e-30)
    return p


def _accept_drawn(p: torch.Tensor, q: torch.Tensor, children: list[int], tokens: list[int], generator):
    """Sampled drafts (drawn from q without replacement, in this order): recursive rejection
    sampling; the accepted child, or the residual distribution when all fail."""
    for c in children:
        x = tokens[c]
        qx = float(q[x])
        if qx <= 0:  # q was used up (fewer tokens with mass than children): not a draw
            continue
        if _rand(generator, p.device) * qx < float(p[x]):  # probability min(1, p(x) / q(x))
            return c
        p = (p - q).clamp_min_(0.0)
        p /= p.sum().clamp_min(1e-30)
        q[x] = 0.0
        q /= q.sum().clamp_min(1e-30)
    return p
