"""Regenerate the example traces the Tree Lab opens without a model.

    PYTHONPATH=. python examples/traces/regenerate.py                 # the trained default head
    PYTHONPATH=. python examples/traces/regenerate.py --head self     # placeholder: the target drafts itself

Each trace is a real run of the eagle2 decoder on the embedded default target (greedy); the app
opens the first on page load, so it uses the app's default policy (eagle2-auto).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import eagle2

HERE = Path(__file__).resolve().parent
PROMPT = "Explain in three sentences how a rainbow forms."
# the answer repeats words of the prompt that the head alone would have to guess, so copied chains (↪) get accepted
LOOKUP_PROMPT = "Fix the spelling mistakes in this sentence: The quick brown fox jumpd over the lazzy dog and ran into the forrest."
RUNS = (
    # file name, policy, sizes, max_new_tokens, prompt (None = --prompt)
    ("01-cpu-eagle2-auto", "eagle2", {"total_tokens": "auto"}, 96, None),  # the app's default policy
    ("02-gpu-eagle2-k10-d6-t60", "eagle2", {"top_k": 10, "depth": 6, "total_tokens": 60}, 64, None),
    ("03-cpu-eagle1-static", "eagle1", {}, 96, None),
    # the auto tree size with prompt lookup: copied chains (↪) next to the head's drafts
    ("04-cpu-eagle2-auto-lookup", "eagle2", {"total_tokens": "auto", "lookup": 10}, 96, LOOKUP_PROMPT),
)


def drafter_for(target, head: str):
    if head == "self":
        return eagle2.ModelDrafter(target.model, name="self (the target drafts)")
    if head == "random":
        torch.manual_seed(0)
        return eagle2.EagleDrafter(eagle2.EagleHead.for_target(target.model.config), target.model,
                                   name="random head (untrained)")
    return eagle2.load_drafter(target, head=head)  # as the CLI and the app: reduced draft vocabulary where it pays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", default="default", help="default (trained head), self, random, or a path / hub id")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    target = eagle2.load_target("default")
    for name, policy, sizes, n, prompt in RUNS:
        rec = eagle2.TraceRecorder()
        pol = eagle2.make_policy(policy, **sizes, target=target)
        out = eagle2.generate_text(target, prompt or args.prompt, drafter=drafter_for(target, args.head),
                                   policy=pol, max_new_tokens=n, observers=[rec])
        rec.trace.meta.update(head=args.head, target_spec="default")
        path = Path(args.out) / f"{name}.json"
        rec.trace.save(path)
        s = out.summary()
        print(f"{path.name}: {s['new_tokens']} tokens, {s['cycles']} cycles, tau {s['tau']}, "
              f"{path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
