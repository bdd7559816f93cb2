"""A tiny hand-built Trace whose every number is known (for tests and for trying the figures).

Cycle 0 (top_k=2, depth=3, total_tokens=5), root "The":
    step 1: c0 " sky" (.6)   c1 " sea" (.3)                        chosen c0, c1
    step 2: c2 " is" (.5·.6=.30)  c3 " was" (.4·.6=.24)  c4 " looks" (.9·.3=.27)  c5 " and" (.05·.3=.015)
            chosen c2, c4
    step 3: c6 " blue" (.9·.30=.27)  c7 " red" (.1·.30=.03)  c8 " calm" (.5·.27=.135)  c9 " dark" (.2·.27=.054)
    rerank keeps c0 c1 c2 c4 c6 (cut-off .27); c3 c5 c7 c8 c9 are dropped
    verify: " sky" ✓, " sea" ✗, " is" ✓, " blue" ✗ (the target wanted " clear"), " looks" unreached
            → emits " sky is" + bonus " clear"
Cycle 1 (one step), root " clear": c0 " today" (.7) ✗, c1 " skies" (.2) ✗ → bonus "."
"""

from __future__ import annotations

from eagle2.trace import (Candidate, CycleRecord, ExpansionStep, RerankStep, Timings, Trace, Verification,
                          VerifiedNode)

TEXT = {10: "The", 11: " sky", 12: " sea", 13: " is", 14: " was", 15: " looks", 16: " and", 17: " blue",
        18: " red", 19: " calm", 20: " dark", 30: " clear", 21: " today", 22: " skies", 23: "."}


def tiny_trace() -> Trace:
    c = Candidate
    cycle0 = CycleRecord(
        index=0, root_token=10,
        expansions=[
            ExpansionStep(1, [-1], [c(0, 11, -1, 1, 0.6, 0.6), c(1, 12, -1, 1, 0.3, 0.3)], [0, 1]),
            ExpansionStep(2, [0, 1], [c(2, 13, 0, 2, 0.5, 0.3), c(3, 14, 0, 2, 0.4, 0.24),
                                      c(4, 15, 1, 2, 0.9, 0.27), c(5, 16, 1, 2, 0.05, 0.015)], [2, 4]),
            ExpansionStep(3, [2, 4], [c(6, 17, 2, 3, 0.9, 0.27), c(7, 18, 2, 3, 0.1, 0.03),
                                      c(8, 19, 4, 3, 0.5, 0.135), c(9, 20, 4, 3, 0.2, 0.054)], [6, 8]),
        ],
        rerank=RerankStep(kept=[0, 1, 2, 4, 6], cutoff_value=0.27, total_candidates=10),
        verification=Verification(nodes=[
            VerifiedNode(0, -1, 10, -1, 0, 1.0, 1.0, 11, 0.7, "root"),
            VerifiedNode(1, 0, 11, 0, 1, 0.6, 0.7, 11, 0.7, "accepted"),
            VerifiedNode(2, 1, 12, 0, 1, 0.3, 0.1, 11, 0.7, "rejected"),
            VerifiedNode(3, 2, 13, 1, 2, 0.3, 0.8, 13, 0.8, "accepted"),
            VerifiedNode(4, 4, 15, 2, 2, 0.27, 0.2, 14, 0.5, "unreached"),
            VerifiedNode(5, 6, 17, 3, 3, 0.27, 0.3, 30, 0.6, "rejected"),
        ], accepted_path=[0, 1, 3], bonus_token=30),
        new_tokens=[11, 13, 30], timings=Timings(0.02, 0.01, 0.001))
    cycle1 = CycleRecord(
        index=1, root_token=30,
        expansions=[ExpansionStep(1, [-1], [c(0, 21, -1, 1, 0.7, 0.7), c(1, 22, -1, 1, 0.2, 0.2)], [0, 1])],
        rerank=RerankStep(kept=[0, 1], cutoff_value=0.2, total_candidates=2),
        verification=Verification(nodes=[
            VerifiedNode(0, -1, 30, -1, 0, 1.0, 1.0, 23, 0.9, "root"),
            VerifiedNode(1, 0, 21, 0, 1, 0.7, 0.05, 23, 0.9, "rejected"),
            VerifiedNode(2, 1, 22, 0, 1, 0.2, 0.01, 23, 0.9, "rejected"),
        ], accepted_path=[0], bonus_token=23),
        new_tokens=[23], timings=Timings(0.015, 0.01, 0.001))
    return Trace(
        meta={"model": "hand-made", "drafter": "none", "prompt": "Describe the sky.", "policy": "eagle2",
              "top_k": 2, "depth": 3, "total_tokens": 5, "temperature": 0.0},
        prompt_tokens=[1, 2, 3], first_token=10, cycles=[cycle0, cycle1], output_tokens=[10, 11, 13, 30, 23],
        token_text={str(k): v for k, v in TEXT.items()},
        summary={"new_tokens": 5, "cycles": 2, "tau": 5 / 3, "mean_accepted": 2.0, "seconds": 0.06,
                 "tokens_per_s": 83.3, "prefill_s": 0.003, "draft_s": 0.035, "verify_s": 0.02, "update_s": 0.002,
                 "stop_reason": "length", "policy": "eagle2", "top_k": 2, "depth": 3, "total_tokens": 5})
