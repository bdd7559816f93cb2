"""Shared fixtures: tiny random Llama models and a word-level tokenizer, built and saved here.

Nothing is downloaded: every model a fast test needs is made in a temp folder.
"""

from __future__ import annotations

import os

import pytest
import torch

WORDS = (
    "the a an and or but if then so of to in on at by for with from is are was were be been "
    "i you he she it we they my your his her its our their this that these those what which who "
    "how why when where can could will would should may might must do does did have has had "
    "not no yes hello world model token tree draft target accept reject value depth path node "
    "fast slow cat dog run see say make good bad new old one two three four five six seven eight "
    "nine ten . , ? ! : ; ( ) - write explain list give story poem code python number name"
).split()
SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} : {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant : {% endif %}"
)


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + ["system", "user", "assistant"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, eos: int | None = 3,
                    max_pos: int = 512, init: float = 0.3):
    """A random Llama whose greedy text varies (init 0.3, untied) instead of repeating one token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
        eos_token_id=eos, bos_token_id=1, pad_token_id=1, tie_word_embeddings=False, initializer_range=init,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny Llama + tokenizer folder usable as `--model PATH`."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_target(tiny_dir):
    from eagle2.models import load_target

    return load_target(tiny_dir, dtype="float32", device="cpu")


@pytest.fixture(autouse=True, scope="session")
def _threads():
    """Tiny models gain nothing from threads, and one thread keeps tests steady on a busy machine."""
    torch.set_num_threads(1)


def model_threads() -> int:
    """Threads for a test that runs the embedded model: both cores, or one each when pytest-xdist
    runs two workers (three busy threads on two cores stall torch's thread pool)."""
    return 1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2


@pytest.fixture(scope="session")
def tiny_head(tiny_dir, tmp_path_factory):
    """A random EAGLE-1/2 head for the tiny Llama, saved as a folder usable as `--head PATH`."""
    from eagle2.head import EagleHead
    from eagle2.models import load_target

    target = load_target(tiny_dir, dtype="float32", device="cpu")
    folder = tmp_path_factory.mktemp("tiny-head")
    EagleHead.for_target(target.model.config).save_pretrained(folder)
    return str(folder)


def run_cli(capsys, *args):
    """`python -m eagle2 ARGS` in-process: (exit code, stdout, stderr)."""
    from eagle2.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err
