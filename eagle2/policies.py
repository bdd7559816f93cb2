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
from dataclasses import dataclass

import torch

from .trace import ExpansionStep, Observer, RerankStep, Timings
from .tree import COPIED, CandidatePool, DraftTree, max_candidates
from .verify import DRAFT_TEMPERATURE, SampledDrafts, Verdict


def draft_topk(drafter, logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most probable drafts of each row of a drafter's log-probs: (log-probs, target token
    ids). A drafter with a draft vocabulary scores only that (cheaper); its indices are mapped."""
    lp, idx = torch.topk(logp, k, dim=-1)
    ids = getattr(drafter, "token_ids", None)
    return lp, (ids.index_select(0, idx.reshape(-1)).view(idx.shape) if ids is not None else idx)


class Policy:
    """Turns the root's draft distribution (and further drafter calls) into a DraftTree.

    The decode loop also tells the policy how each tree fared (`learn`), so a policy that
    adapts (autotree.AutoEagle2) steers from what it is told; observers only watch.
    """

    name = "policy"
    needs_drafter = True
    can_sample_drafts = False  # can draw its drafts from the drafter at T > 0 and stay exact
    sampled_drafts = True  # the user's choice where it can (registry option "sampled"); False: top-k
    drafts: SampledDrafts | None = None  # this generation's sampled drafts (set by the decode loop)
    draft_temperature = DRAFT_TEMPERATURE  # sampled drafts: q at T × this (registry option "dtemp")

    def draft(self, root_token: int, root_logprobs: torch.Tensor, drafter,
              observer: Observer | None = None, cycle: int = 0) -> DraftTree:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"policy": self.name}

    def use_sampled_drafts(self, drafts: SampledDrafts | None) -> None:
        """Before a generation the decode loop offers sampled drafts (None when greedy); taken
        where this policy keeps them exact and the user did not choose top-k drafts."""
        self.drafts = drafts if drafts is not None and self.can_sample_drafts and self.sampled_drafts else None
        if self.drafts is not None:
            self.drafts.draft_temperature = self.draft_temperature  # checked there

    def propose(self, drafter, logp: torch.Tensor, k: int, parents) -> tuple[torch.Tensor, torch.Tensor]:
        """k children for each row of `logp` (their parents' pool ids, -1 = the root): the
        top-k, or with sampled drafts k draws (verify.SampledDrafts). (log values, token ids)."""
        if self.drafts is None:
            return draft_topk(drafter, logp, k)
        return self.drafts.draw(logp, k, parents, getattr(drafter, "token_ids", None))

    def start(self, context: list[int]) -> None:
        """A generation begins: the prompt plus the first generated token."""

    def learn(self, cycle: int, tree: DraftTree, verdict: Verdict, tokens: list[int], timings: Timings) -> None:
        """After verification: the tree, what the target accepted, the tokens emitted, the timings."""


class Vanilla(Policy):
    """No drafting: plain autoregressive decoding through the same verify code."""

    name = "vanilla"
    needs_drafter = False

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        return DraftTree([root_token], [-1], check=False)


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
    can_sample_drafts = True
    _last_pool: CandidatePool | None = None  # reused cycle after cycle (a policy serves one generation at a time)

    def __init__(self, top_k: int = 4, depth: int = 5, total_tokens: int = 12):
        check_size(top_k, depth, total_tokens)
        self.top_k, self.depth, self.total_tokens = top_k, depth, total_tokens

    def describe(self) -> dict:
        return {"policy": self.name, "top_k": self.top_k, "depth": self.depth, "total_tokens": self.total_tokens}

    def expand(self, root_logprobs, drafter, pool: CandidatePool, observer, cycle) -> None:
        """Grow the candidate pool, a level at a time on the drafter's device: the top_k
        frontier nodes propose top_k children each; the top_k of those by value are the next
        frontier. `keep_expanding` may end it early. The frontier is carried as tensors of its
        own (tokens, log values, the drafter slots of its parents), so a step reads nothing
        back from the pool."""
        k = self.top_k
        lp, tok = self.propose(drafter, root_logprobs, k, -1)
        start = pool.add_level(None, tok.view(1, -1), lp.view(1, -1), lp.view(1, -1), depth=1)
        frontier, front_tok, front_lv = pool.ids(start, tok.numel()), tok, lp
        parent_slots = torch.full_like(tok, -1)  # the root's children: their parent is the root
        if observer:
            observer.on_expand(cycle, ExpansionStep(1, [-1], pool.records(frontier), frontier.tolist()))
        for step in range(2, self.depth + 1):
            if not self.keep_expanding(pool, frontier, step):
                break
            first_slot = drafter.num_slots
            logp = drafter.step(front_tok, parent_slots)
            pool.note_fed(frontier, first_slot)
            child_lp, child_tok = self.propose(drafter, logp, k, frontier)  # (frontier, k)
            child_lv = front_lv.unsqueeze(1) + child_lp
            start = pool.add_level(frontier, child_tok, child_lp, child_lv, depth=step)
            flat_lv, n = child_lv.view(-1), child_lv.numel()
            # the best k of the new level (level-local indices, in creation order); child l's
            # parent is the frontier's (l // k)-th node, fed as slot first_slot + l // k
            best = torch.topk(flat_lv, k).indices.sort().values if n > k else pool.ids(0, n)
            fed, frontier = frontier, best + start
            front_tok, front_lv = child_tok.view(-1).index_select(0, best), flat_lv.index_select(0, best)
            parent_slots = best.div(child_lv.shape[1], rounding_mode="floor").add_(first_slot)
            if observer:
                observer.on_expand(cycle, ExpansionStep(step, fed.tolist(), pool.records(pool.ids(start, n)),
                                                        frontier.tolist()))

    def keep_expanding(self, pool: CandidatePool, frontier: torch.Tensor, step: int) -> bool:
        """Asked before each drafter step (the hook a cost-aware policy overrides)."""
        return True

    def tree_size(self, pool: CandidatePool) -> int:
        """How many candidates the rerank keeps (the hook a cost-aware policy overrides)."""
        return self.total_tokens

    def select(self, pool: CandidatePool, root_token: int, observer, cycle: int) -> DraftTree:
        """The tree to verify: the rerank's (the hook a policy that adds candidates overrides)."""
        return pool.rerank(root_token, self.tree_size(pool))

    def new_pool(self, device: torch.device) -> CandidatePool:
        """This cycle's candidate pool: last cycle's, emptied (its buffers kept), when on `device`."""
        pool = self._last_pool
        if pool is None or pool.device != device:
            pool = self._last_pool = CandidatePool(device, capacity=max_candidates(self.top_k, self.depth))
        else:
            pool.clear()
        return pool

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        pool = self.new_pool(root_logprobs.device)
        self.expand(root_logprobs, drafter, pool, observer, cycle)
        tree = self.select(pool, root_token, observer, cycle)
        if observer:
            values = tree.log_values[1:]
            if self.drafts is not None and tree.sources is not None:  # copies joined after the drawn were chosen
                values = values[tree.sources[1:] != COPIED]
            cutoff = math.exp(float(values.min())) if values.numel() else 1.0
            observer.on_rerank(cycle, RerankStep(tree.candidate_ids[1:], cutoff, len(pool)))
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


@dataclass
class StaticLevel:
    """One depth of a static tree as index tensors (Eagle1 drafts from these, made once per device)."""

    depth: int
    fed: torch.Tensor  # pool ids fed to the drafter before this level (depth > 1)
    width: int  # children asked of each fed node (at depth 1: of the root)
    pick: torch.Tensor  # each choice's index into the (fed x width) proposals
    parents: torch.Tensor  # each choice's parent id (-1 = the root)
    fed_ids: list[int]  # `fed` on the host, for traces
    with_children: list[int]  # ids of this level's choices that have children, for traces


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
        # sampled drafts stay exact when every node keeps its first draws: ranks 0, 1, ..., n-1
        ranks: dict[tuple, set[int]] = {}
        for c in paths:
            ranks.setdefault(c[:-1], set()).add(c[-1])
        self.can_sample_drafts = all(r == set(range(len(r))) for r in ranks.values())
        self._plans: dict[torch.device, list[StaticLevel]] = {}

    @property
    def total_tokens(self) -> int:
        return len(self.choices)

    @property
    def depth(self) -> int:
        return max(len(c) for c in self.choices)

    def describe(self) -> dict:
        return {"policy": self.name, "total_tokens": self.total_tokens, "depth": self.depth}

    def _plan(self, device: torch.device) -> list[StaticLevel]:
        """The tree's levels as index tensors on `device` (built once per device). Pool ids
        follow creation order: level by level, each level in choice order."""
        if device in self._plans:
            return self._plans[device]
        id_of: dict[tuple, int] = {(): -1}
        for i, c in enumerate(self.choices):  # sorted by (depth, ranks): creation order
            id_of[c] = i

        def as_tensor(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.long, device=device)

        plan = []
        for depth in range(1, self.depth + 1):
            level = [c for c in self.choices if len(c) == depth]
            fed = sorted({c[:-1] for c in level})
            width = max(c[-1] for c in self.choices) + 1 if depth == 1 else max(c[-1] for c in level) + 1
            pick = [fed.index(c[:-1]) * width + c[-1] for c in level]
            fed_ids, parent_ids = [id_of[p] for p in fed], [id_of[c[:-1]] for c in level]
            has_kids = {c[:-1] for c in self.choices if len(c) == depth + 1}
            plan.append(StaticLevel(depth, as_tensor(fed_ids), width, as_tensor(pick), as_tensor(parent_ids), fed_ids,
                                    [id_of[c] for c in level if c in has_kids]))
        self._plans[device] = plan
        return plan

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        """Level by level with index tensors made once (`_plan`): no value is read back to the host."""
        pool = CandidatePool(root_logprobs.device, capacity=len(self.choices))
        for lv in self._plan(root_logprobs.device):
            if lv.depth == 1:  # the root's children: its `width` best (or draws), picked by rank
                lp, tok = self.propose(drafter, root_logprobs, lv.width, -1)
            else:  # feed this level's parents to the drafter, then pick each choice's rank among their children
                lps, toks = self.propose(drafter, pool.feed(drafter, lv.fed), lv.width, lv.fed)
                lp, tok = lps.reshape(-1), toks.reshape(-1)
            new = pool.add(lv.parents, tok.index_select(0, lv.pick), lp.index_select(0, lv.pick), depth=lv.depth)
            if observer:
                observer.on_expand(cycle, ExpansionStep(lv.depth, lv.fed_ids, pool.records(new), lv.with_children))
        tree = pool.rerank(root_token, len(pool))  # keeps every node, in creation order
        if observer:
            cutoff = math.exp(float(pool.log_value.min()))
            observer.on_rerank(cycle, RerankStep(tree.candidate_ids[1:], cutoff, len(pool)))
        return tree
