"""Mean τ of EAGLE heads on the prompts in examples/prompts.json (fixed eagle2 4/5/12 tree, 96 tokens, bf16).

    PYTHONPATH=. python scripts/compare_heads.py HEAD_FOLDER [HEAD_FOLDER ...]
"""
import json, sys, eagle2, torch
from eagle2.head import EagleHead
torch.set_num_threads(2)
t = eagle2.load_target()
prompts = [p if isinstance(p, str) else p.get("prompt", p.get("text")) for p in json.load(open("examples/prompts.json"))]
prompts = [p for p in prompts if isinstance(p, str)][:6]
for path in sys.argv[1:]:
    d = eagle2.EagleDrafter(EagleHead.from_pretrained(path), t.model)
    taus = []
    for p in prompts:
        r = eagle2.generate_text(t, p, drafter=d, policy=eagle2.make_policy("eagle2"), max_new_tokens=96)
        taus.append(r.tau)
    print(path, "mean tau", round(sum(taus)/len(taus), 3), [round(x, 2) for x in taus])
