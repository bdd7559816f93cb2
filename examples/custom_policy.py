"""A user-defined tree policy: best-first growth instead of EAGLE-2's level-by-level expansion.

Each step feeds the single most valuable not-yet-expanded candidate to the drafter and adds its
top_k children; after `steps` expansions the usual rerank keeps the `total_tokens` best. Run:

    PYTHONPATH=. python examples/custom_policy.py "Why do cats purr?"
"""

from __future__ import annotations

import sys

import torch

import eagle2
from eagle2.policies import Policy, draft_topk
from eagle2.trace import ExpansionStep
from eagle2.tree import CandidatePool, DraftTree


class BestFirst(Policy):
    name = "best-first"

    def __init__(self, top_k: int = 4, steps: int = 6, total_tokens: int = 12):
        if min(top_k, steps, total_tokens) < 1:
            raise ValueError("top_k, steps and total_tokens must be >= 1")
        self.top_k, self.steps, self.total_tokens = top_k, steps, total_tokens

    def describe(self) -> dict:
        return {"policy": self.name, "top_k": self.top_k, "steps": self.steps, "total_tokens": self.total_tokens}

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        pool = CandidatePool(root_logprobs.device)  # tensors: tokens, parents, log_value, depth, ...
        lp, tok = draft_topk(drafter, root_logprobs, self.top_k)  # log-probs and token ids
        new = pool.add([-1] * self.top_k, tok, lp)
        if observer:
            observer.on_expand(cycle, ExpansionStep(1, [-1], pool.records(new), new.tolist()))
        expanded = torch.zeros(0, dtype=torch.bool, device=pool.device)
        for _ in range(self.steps):
            expanded = torch.cat([expanded, torch.zeros(len(new), dtype=torch.bool, device=pool.device)])
            best = int(pool.log_value.masked_fill(expanded, float("-inf")).argmax())  # the most valuable leaf
            expanded[best] = True
            child_lp, child_tok = draft_topk(drafter, pool.feed(drafter, [best])[0], self.top_k)
            new = pool.add([best] * self.top_k, child_tok, child_lp)
            if observer:
                depth = int(pool.depth[best]) + 1
                observer.on_expand(cycle, ExpansionStep(depth, [best], pool.records(new), [best]))
        return pool.rerank(root_token, self.total_tokens)  # keep the total_tokens most valuable


def main() -> None:
    prompt = sys.argv[1] if len(sys.argv) > 1 else "Why do cats purr?"
    target = eagle2.load_target("default")
    drafter = eagle2.load_drafter(target, head="default")
    for policy in (BestFirst(), eagle2.make_policy("eagle2")):
        out = eagle2.generate_text(target, prompt, drafter=drafter, policy=policy, max_new_tokens=96)
        print(f"{policy.name:>10}: tau {out.tau:.2f}, {out.tokens_per_s:.1f} tok/s")
    print(out.text)


if __name__ == "__main__":
    main()
