"""A user-defined tree policy: best-first growth instead of EAGLE-2's level-by-level expansion.

Each step feeds the single most valuable not-yet-expanded candidate to the drafter and adds its
top_k children; after `steps` expansions the usual rerank keeps the `total_tokens` best. Run:

    PYTHONPATH=. python examples/custom_policy.py "Why do cats purr?"
"""

from __future__ import annotations

import sys

import torch

import eagle2
from eagle2.policies import CandidatePool, Policy
from eagle2.trace import ExpansionStep
from eagle2.tree import DraftTree, rerank


class BestFirst(Policy):
    name = "best-first"

    def __init__(self, top_k: int = 4, steps: int = 6, total_tokens: int = 12):
        if min(top_k, steps, total_tokens) < 1:
            raise ValueError("top_k, steps and total_tokens must be >= 1")
        self.top_k, self.steps, self.total_tokens = top_k, steps, total_tokens

    def describe(self) -> dict:
        return {"policy": self.name, "top_k": self.top_k, "steps": self.steps, "total_tokens": self.total_tokens}

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        pool = CandidatePool()
        lp, tok = torch.topk(root_logprobs, self.top_k)
        new = pool.add([-1] * self.top_k, tok.tolist(), lp.tolist())
        if observer:
            observer.on_expand(cycle, ExpansionStep(1, [-1], pool.records(new), list(new)))
        expanded: set[int] = set()
        for step in range(2, self.steps + 2):
            open_ids = [i for i in range(len(pool)) if i not in expanded]
            best = max(open_ids, key=lambda i: pool.log_value[i])  # the globally most valuable leaf
            expanded.add(best)
            child_lp, child_tok = torch.topk(pool.feed(drafter, [best])[0], self.top_k)
            new = pool.add([best] * self.top_k, child_tok.tolist(), child_lp.tolist())
            if observer:
                observer.on_expand(cycle, ExpansionStep(pool.depth[best] + 1, [best], pool.records(new), [best]))
        tree, _ = rerank(root_token, torch.tensor(pool.tokens), torch.tensor(pool.parents),
                         torch.tensor(pool.log_conf), torch.tensor(pool.log_value), self.total_tokens)
        return tree


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
