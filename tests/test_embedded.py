"""Integration tests on the embedded SmolLM2-135M-Instruct target (a few seconds each)."""

import pytest
import torch

import eagle2
from eagle2.draft import DEFAULT_HEADS

from conftest import model_threads

pytestmark = pytest.mark.slow

PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about a cat who loves the rain.",
    "List three tips for staying focused while studying.",
    "What is the difference between a list and a tuple in Python?",
    "Give me a recipe idea for a quick vegetarian dinner.",
]
HEAD_SHIPPED = (DEFAULT_HEADS["SmolLM2-135M-Instruct"] / "config.json").exists()


@pytest.fixture(scope="module")
def target_fp32():
    torch.set_num_threads(model_threads())
    yield eagle2.load_target("default", dtype="float32")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def drafter(target_fp32):
    if HEAD_SHIPPED:
        return eagle2.load_drafter(target_fp32, head="default")
    torch.manual_seed(0)  # until the trained head ships: a random head still exercises every path
    return eagle2.EagleDrafter(eagle2.EagleHead.for_target(target_fp32.model.config), target_fp32.model)


@pytest.fixture(scope="module")
def vanilla_answers(target_fp32):
    """The target's own greedy answers to PROMPTS, decoded once for every policy compared with them."""
    return {prompt: eagle2.generate_text(target_fp32, prompt, policy=eagle2.Vanilla(), max_new_tokens=40)
            for prompt in PROMPTS}


@pytest.mark.parametrize("policy", ["eagle2", "eagle1"])
def test_greedy_lossless_on_embedded_target(target_fp32, drafter, vanilla_answers, policy):
    for prompt, ref in vanilla_answers.items():
        out = eagle2.generate_text(target_fp32, prompt, drafter=drafter, policy=eagle2.make_policy(policy),
                                   max_new_tokens=40)
        assert out.tokens == ref.tokens, prompt
        assert out.text == ref.text


def test_prompt_lookup_is_lossless_and_copies_on_embedded_target(target_fp32, drafter):
    """eagle2 + prompt lookup on a prompt whose answer repeats it: exact, and copies are accepted."""
    from eagle2.autotree import AutoEagle2, LatencyModel

    prompt = "Add type hints and a docstring to this function:\n\ndef area(width, height):\n    return width * height"
    ref = eagle2.generate_text(target_fp32, prompt, policy=eagle2.Vanilla(), max_new_tokens=48)
    policy = AutoEagle2(LatencyModel([1, 16, 64], [0.04, 0.05, 0.1]), lookup=10)  # a fixed CPU-like curve
    out = eagle2.generate_text(target_fp32, prompt, drafter=drafter, policy=policy, max_new_tokens=48)
    assert out.tokens == ref.tokens
    assert sum(map(sum, policy.copier.rates.acc)) > 0  # copied tokens were accepted


def test_vanilla_matches_hf_generate(target_fp32):
    ids = eagle2.encode_prompt(target_fp32.tokenizer, PROMPTS[0])
    ours = eagle2.generate(target_fp32.model, ids, eagle2.Vanilla(), max_new_tokens=30,
                           eos_token_ids=target_fp32.eos_token_ids)
    hf = eagle2.hf_generate(target_fp32.model, ids, 30, eos_token_ids=target_fp32.eos_token_ids)
    assert ours.tokens == hf.tokens


def _shipped_head_tau() -> list[float]:
    torch.set_num_threads(model_threads())
    target = eagle2.load_target("default")
    drafter = eagle2.load_drafter(target, head="default")
    taus = []
    for prompt in ("How do I make a cup of green tea?", "Describe the water cycle for a ten-year-old."):
        out = eagle2.generate_text(target, prompt, drafter=drafter, policy=eagle2.make_policy("eagle2"),
                                   max_new_tokens=96)
        taus.append(out.tau)
    torch.set_num_threads(1)
    return taus


@pytest.fixture(scope="module")
def shipped_taus():
    return _shipped_head_tau()


@pytest.mark.skipif(not HEAD_SHIPPED, reason="the trained head is not shipped yet")
def test_shipped_head_accepts_drafts(shipped_taus):
    """The shipped head really drafts (issue 3: τ > 2 on two prompts of ours): a random head gives
    τ ≈ 1.0, the previous head 2.4 and 1.9, the current one 2.74 and 2.18. A weaker head or a
    broken drafter fails this."""
    assert min(shipped_taus) > 2.0, shipped_taus
