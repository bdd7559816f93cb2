"""Tree policies: turn a drafter's proposals into a DraftTree.

    eagle2   dynamic tree: expand the top_k frontier by value for `depth` steps, then rerank
             all candidates and keep the `total_tokens` most valuable (EAGLE-2, §4)
    eagle1   static tree from a list of top-k rank paths (EAGLE-1 / Medusa style)
    chain    one token per step, top-1 (classic speculative decoding)
    vanilla  no drafting: the tree is just the root, so every cycle yields one token

A user-defined policy subclasses `Policy` and implements `draft` (see examples/).
`depth` here is the depth of the deepest draft token, so a cycle yields at most depth + 1
tokens (EAGLE-2's code counts one step fewer: its depth=5 is our depth=6).
"""

from __future__ import annotations

import math

import torch

from .trace import Candidate, ExpansionStep, Observer, RerankStep
from .tree import DraftTree, max_candidates, rerank


class CandidatePool:
    """Every token proposed in one cycle, in creation order (parents before children)."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.log_conf: list[float] = []
        self.log_value: list[float] = []
        self.depth: list[int] = []
        self.slot: list[int] = []  # drafter slot once the node was fed to the drafter
        self.source: list[str] = []  # "draft", "lookup" or "both" (eagle2.lookup)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parents: list[int], tokens: list[int], log_conf: list[float], source: str = "draft") -> list[int]:
        start = len(self.tokens)
        for p, t, lc in zip(parents, tokens, log_conf):
            self.tokens.append(t)
            self.parents.append(p)
            self.log_conf.append(lc)
            self.log_value.append((self.log_value[p] if p >= 0 else 0.0) + lc)
            self.depth.append((self.depth[p] if p >= 0 else 0) + 1)
            self.slot.append(-1)
            self.source.append(source)
        return list(range(start, len(self.tokens)))

    def feed(self, drafter, ids: list[int]) -> torch.Tensor:
        """Feed candidates to the drafter (parents already fed); returns their children's log-probs."""
        parent_slots = [self.slot[self.parents[i]] if self.parents[i] >= 0 else -1 for i in ids]
        first = drafter.num_slots
        logp = drafter.step(torch.tensor([self.tokens[i] for i in ids], device=drafter.device), parent_slots)
        for j, i in enumerate(ids):
            self.slot[i] = first + j
        return logp

    def records(self, ids: list[int]) -> list[Candidate]:
        return [Candidate(i, self.tokens[i], self.parents[i], self.depth[i], math.exp(self.log_conf[i]),
                          math.exp(self.log_value[i]), self.source[i]) for i in ids]

    def tree(self, root_token: int, keep: list[int]) -> DraftTree:
        node = {-1: 0, **{c: n + 1 for n, c in enumerate(keep)}}
        return DraftTree([root_token] + [self.tokens[c] for c in keep],
                         [-1] + [node[self.parents[c]] for c in keep],
                         [0.0] + [self.log_conf[c] for c in keep], candidate_ids=[-1] + keep)


class Policy:
    """Turns the root's draft distribution (and further drafter calls) into a DraftTree."""

    name = "policy"
    needs_drafter = True

    def draft(self, root_token: int, root_logprobs: torch.Tensor, drafter,
              observer: Observer | None = None, cycle: int = 0) -> DraftTree:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"policy": self.name}


class Vanilla(Policy):
    """No drafting: plain autoregressive decoding through the same verify code."""

    name = "vanilla"
    needs_drafter = False

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        return DraftTree([root_token], [-1])


def check_size(top_k: int, depth: int, total_tokens: int) -> None:
    for label, v in (("top_k", top_k), ("depth", depth), ("total_tokens", total_tokens)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{label} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{label} must be >= 1, got {v}")
    cap = max_candidates(top_k, depth)
    if total_tokens > cap:
        raise ValueError(f"total_tokens={total_tokens} is more than a top_k={top_k}, depth={depth} "
                         f"tree can hold ({cap})")


def check_lookup(lookup: int) -> None:
    """The longest copied chain of prompt lookup (eagle2.lookup); 0 = off."""
    if not isinstance(lookup, int) or isinstance(lookup, bool) or lookup < 0:
        raise ValueError(f"lookup must be an int >= 0 (the longest copied chain; 0 = off), got {lookup!r}")


class Eagle2(Policy):
    """EAGLE-2's dynamic draft tree: expand by value, then rerank to total_tokens."""

    name = "eagle2"

    def __init__(self, top_k: int = 4, depth: int = 5, total_tokens: int = 12):
        check_size(top_k, depth, total_tokens)
        self.top_k, self.depth, self.total_tokens = top_k, depth, total_tokens

    def describe(self) -> dict:
        return {"policy": self.name, "top_k": self.top_k, "depth": self.depth, "total_tokens": self.total_tokens}

    def expand(self, root_logprobs, drafter, pool: CandidatePool, observer, cycle) -> None:
        """Grow the candidate pool: at each depth the top_k frontier nodes propose top_k children."""
        k = self.top_k
        lp, tok = torch.topk(root_logprobs, k)
        frontier = pool.add([-1] * k, tok.tolist(), lp.tolist())
        if observer:
            observer.on_expand(cycle, ExpansionStep(1, [-1], pool.records(frontier), list(frontier)))
        for step in range(2, self.depth + 1):
            child_lp, child_tok = torch.topk(pool.feed(drafter, frontier), k, dim=-1)  # (k, k)
            parents = [p for p in frontier for _ in range(k)]
            new = pool.add(parents, child_tok.flatten().tolist(), child_lp.flatten().tolist())
            values = torch.tensor([pool.log_value[i] for i in new])
            best = torch.topk(values, min(k, len(new))).indices.sort().values.tolist()
            chosen = [new[i] for i in best]
            if observer:
                observer.on_expand(cycle, ExpansionStep(step, list(frontier), pool.records(new), chosen))
            frontier = chosen

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        pool = CandidatePool()
        self.expand(root_logprobs, drafter, pool, observer, cycle)
        tree, kept = rerank(root_token, torch.tensor(pool.tokens), torch.tensor(pool.parents),
                            torch.tensor(pool.log_conf), torch.tensor(pool.log_value), self.total_tokens)
        if observer:
            cutoff = min(math.exp(pool.log_value[c]) for c in kept) if kept else 1.0
            observer.on_rerank(cycle, RerankStep(kept, cutoff, len(pool)))
        return tree


class Chain(Eagle2):
    """A single chain of `depth` top-1 drafts."""

    name = "chain"

    def __init__(self, depth: int = 5):
        super().__init__(top_k=1, depth=depth, total_tokens=depth)

    def describe(self) -> dict:
        return {"policy": self.name, "depth": self.depth}


# A 25-node static tree in the spirit of EAGLE's mc_sim_7b_63 (wide near the root, a deep
# rank-0 spine): each entry is the path of top-k ranks from the root.
DEFAULT_STATIC_TREE: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 2, 0), (2, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 0, 0),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 1, 0),
)


class Eagle1(Policy):
    """EAGLE-1's static tree: the same shape every cycle, whatever the context."""

    name = "eagle1"

    def __init__(self, choices=DEFAULT_STATIC_TREE):
        paths = sorted({tuple(int(r) for r in c) for c in choices}, key=lambda c: (len(c), c))
        if not paths:
            raise ValueError("a static tree needs at least one choice")
        for c in paths:
            if not c or min(c) < 0:
                raise ValueError(f"bad tree choice {list(c)}: ranks are non-negative and paths non-empty")
            if len(c) > 1 and c[:-1] not in paths:
                raise ValueError(f"tree choice {list(c)} has no parent {list(c[:-1])} in the list")
        self.choices = paths

    @property
    def total_tokens(self) -> int:
        return len(self.choices)

    @property
    def depth(self) -> int:
        return max(len(c) for c in self.choices)

    def describe(self) -> dict:
        return {"policy": self.name, "total_tokens": self.total_tokens, "depth": self.depth}

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        pool = CandidatePool()
        id_of: dict[tuple, int] = {(): -1}
        logp_of: dict[tuple, tuple[list[float], list[int]]] = {}
        need = max(c[-1] for c in self.choices) + 1
        lp, tok = torch.topk(root_logprobs, need)
        logp_of[()] = (lp.tolist(), tok.tolist())
        for depth in range(1, self.depth + 1):
            level = [c for c in self.choices if len(c) == depth]
            parents = sorted({c[:-1] for c in level})
            if depth > 1:  # feed the parents of this level to the drafter
                ids = [id_of[p] for p in parents]
                width = max(c[-1] for c in level) + 1
                lps, toks = torch.topk(pool.feed(drafter, ids), width, dim=-1)
                for p, l, t in zip(parents, lps.tolist(), toks.tolist()):
                    logp_of[p] = (l, t)
            new = []
            for c in level:
                l, t = logp_of[c[:-1]]
                (i,) = pool.add([id_of[c[:-1]]], [t[c[-1]]], [l[c[-1]]])
                id_of[c] = i
                new.append(i)
            if observer:
                has_kids = {c[:-1] for c in self.choices if len(c) == depth + 1}
                observer.on_expand(cycle, ExpansionStep(depth, [id_of[p] for p in parents], pool.records(new),
                                                        [id_of[c] for c in level if c in has_kids]))
        keep = list(range(len(pool)))
        if observer:
            observer.on_rerank(cycle, RerankStep(keep, min(math.exp(v) for v in pool.log_value), len(pool)))
        return pool.tree(root_token, keep)


POLICIES = {"eagle2": Eagle2, "eagle1": Eagle1, "chain": Chain, "vanilla": Vanilla}


def make_policy(name: str, top_k: int | None = None, depth: int | None = None,
                total_tokens: int | str | None = None, target=None, lookup: int = 0) -> Policy:
    """Build a named policy; unset sizes take the policy's CPU-sized defaults.

    total_tokens="auto" (eagle2 only) sizes each cycle's tree for this machine: it calibrates
    the target's verify latency once (cached) and keeps the nodes that maximise expected
    tokens per second (see eagle2/autotree.py); it needs the `target`. With it, lookup=N
    merges a prompt-lookup chain of up to N copied tokens into each tree (eagle2/lookup.py).
    """
    check_lookup(lookup)
    if lookup and not (name == "eagle2" and total_tokens == "auto"):
        raise ValueError("lookup needs the eagle2 policy with total_tokens='auto' (the tree size that "
                         "weighs copied tokens against drafted ones)")
    if name == "eagle2" and total_tokens == "auto":
        if target is None:
            raise ValueError("total_tokens='auto' needs the target model to calibrate against")
        from .autotree import auto_policy

        return auto_policy(target, top_k=top_k, depth=depth, lookup=lookup)
    if isinstance(total_tokens, str):
        raise ValueError(f"total_tokens must be an int or 'auto' (eagle2 only), got {total_tokens!r}")
    given = {k: v for k, v in (("top_k", top_k), ("depth", depth), ("total_tokens", total_tokens)) if v is not None}
    if name == "eagle2":
        return Eagle2(**given)
    if name == "chain":
        return Chain(**({"depth": given["depth"]} if "depth" in given else {}))
    if name == "eagle1":
        return Eagle1()
    if name == "vanilla":
        return Vanilla()
    raise ValueError(f"unknown policy {name!r}: choose from {', '.join(POLICIES)}")
