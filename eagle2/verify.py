"""Acceptance: which drafted tokens the target agrees with. Pure functions on logits.

greedy  walk down from the root, following the child whose token is the target's argmax;
        the target's argmax at the last accepted node is the bonus token. Equals plain
        greedy decoding token for token.
sample  multi-candidate speculative sampling. Drafts are deterministic (top-k), so at a node
        with target distribution p we try its children in order: accept child x with
        probability p(x); otherwise set p(x) = 0, renormalise and try the next. If every child
        fails, the bonus token is sampled from what is left. Each emitted token is exactly
        distributed as the target's (processed) distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import DraftTree


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


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the last axis in fp32: the same indices (bf16/fp16 -> fp32 is exact, first
    maximum wins either way, as in HF generate, which upcasts too), and on a CPU several times
    faster than a half-precision argmax over a 49 k vocabulary."""
    return logits.float().argmax(dim=-1)


def greedy_accept(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """Longest path whose every token is the target's argmax after its parent, for all root
    paths at once: a node is reachable when it and all its ancestors match; the deepest
    reachable node ends the path (siblings carry distinct tokens, so it is unique). One
    device-to-host copy brings back the path, the rejected children and the bonus token."""
    n = len(tree)
    if n == 1:  # nothing drafted (vanilla decoding)
        return Verdict([0], int(argmax(logits[0])), [], [])
    best = argmax(logits)
    up = tree.parents.clamp_min(0)
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


def sample_accept(tree: DraftTree, probs, generator: torch.Generator | None = None) -> Verdict:
    """Multi-candidate speculative sampling for deterministic drafts (probs: (N, V) processed,
    or a RowProbs that computes the rows it is asked for)."""
    tokens = tree.tokens.tolist()
    kids = tree.children()
    path, rejected, node = [0], [], 0
    while True:
        p, owned = probs[node], False
        accepted = None
        for c in kids[node]:
            x = tokens[c]
            px = float(p[x])
            if px > 0 and float(torch.rand((), generator=generator, device=p.device)) < px:
                accepted = c
                break
            rejected.append(c)
            if px > 0:
                if not owned:
                    p, owned = p.clone(), True
                p[x] = 0.0
                p /= p.sum().clamp_min(1e-30)
        if accepted is None:
            accepted_tokens = [tokens[i] for i in path[1:]]
            if float(p.sum()) <= 0:  # rounding left no mass: fall back to the target's top token
                return Verdict(path, int(probs[node].argmax()), rejected, accepted_tokens)
            return Verdict(path, int(torch.multinomial(p, 1, generator=generator)), rejected, accepted_tokens)
        path.append(accepted)
        node = accepted
