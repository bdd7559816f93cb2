"""How often a decode cycle waits for the device: reads of tensor values on the host (`tolist`,
`item`, `int(t)`, ...), counted per generation with no recording observer (#13 item 1). On a
GPU each one is a synchronisation; the fixed-size policies (EAGLE-2 at a fixed size, chain, EAGLE-1's
static tree) make one a cycle, the verdict."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from eagle2 import engine_bench as eb
from eagle2.decode import generate
from eagle2.draft import EagleDrafter
from eagle2.policies import Chain, Eagle1, Eagle2

HOST_READS = {"tolist", "item", "__int__", "__bool__", "__float__", "__index__", "numpy"}


class CountHostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tiny():
    model, head = eb.build_tiny()
    return model, EagleDrafter(head, model, name="tiny-head")


@pytest.mark.parametrize("policy", [Eagle2(top_k=10, depth=6, total_tokens=60), Eagle2(), Chain(depth=4), Eagle1()],
                         ids=["paper-tree", "eagle2", "chain", "eagle1-static"])
def test_a_fixed_size_cycle_reads_the_device_once(tiny, policy):
    model, drafter = tiny
    prompt = eb.random_prompts(model.config.vocab_size, (24,), seed=3)[0]
    generate(model, prompt, policy, drafter, max_new_tokens=8)  # warm-up (first calls allocate)
    with CountHostReads() as counter:
        res = generate(model, prompt, policy, drafter, max_new_tokens=48)
    cycles = len(res.cycles)
    assert cycles >= 5
    # the prefill's first token and the prompt ids as a list: two reads a generation, then the
    # verdict of each cycle (verify.greedy_accept: the path, rejected nodes and bonus in one copy)
    assert counter.reads == cycles + 2, (counter.reads, cycles)


def test_the_counter_sees_a_host_read():
    """The counter is not blind: a value read in the middle of tensor work is counted."""
    with CountHostReads() as counter:
        x = torch.arange(4) * 2
        int(x[1]), x.tolist()
    assert counter.reads == 2
