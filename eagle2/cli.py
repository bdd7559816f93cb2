"""Command line: python -m eagle2 {generate,bench,train,serve-config} ...

Bad input exits with code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .models import DTYPE_CHOICES, DTYPE_HELP

ORIGIN_COLOURS = {"draft": "\033[32m", "target": "\033[0m"}  # accepted drafts green, target tokens plain
CYCLE_MARK = "\033[2m|\033[0m"


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus exit code 2), not the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, with a one-line reason otherwise."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    return parse


positive_int = int_at_least(1)


def total_tokens_arg(text: str):
    return "auto" if text == "auto" else positive_int(text)


def draft_vocab_arg(text: str):
    return "auto" if text == "auto" else int_at_least(0)(text)


def device_map_arg(text: str):
    """argparse type of --device-map: auto, balanced or a JSON file {module name: device}."""
    from eagle2.models import read_device_map

    try:
        return read_device_map(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def policy_arg(text: str):
    """argparse type of --policy: a registered policy name or a spec string (eagle2.registry)."""
    from eagle2 import registry

    name = registry.spec_name(text)
    if name not in registry.names():
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(registry.names())})")
    try:
        return registry.parse_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def generate_parser() -> argparse.ArgumentParser:
    from eagle2.registry import policy_table

    p = OneLineParser(prog="python -m eagle2 generate", formatter_class=argparse.RawDescriptionHelpFormatter,
                      description="Generate with EAGLE-2 speculative decoding and print the answer.",
                      epilog="policies (--policy NAME, or NAME@KEY=VALUE... as in eagle2/registry.py):\n"
                             + policy_table())
    p.add_argument("--prompt", required=True, help="the user message (chat template applied unless --raw)")
    p.add_argument("--model", default="default", help="default | hub id | local folder")
    p.add_argument("--head", default="default", help="EAGLE head: default | hub id | local folder")
    p.add_argument("--draft-model", default=None, help="use a small LM with the same tokenizer instead of a head")
    p.add_argument("--draft-vocab", type=draft_vocab_arg, default="auto", metavar="N|auto",
                   help="EAGLE-1/2 heads: score only the N most frequent tokens when drafting (0 = the whole "
                        "vocabulary; auto = the head's token counts, where that makes a draft step cheaper "
                        "on this machine; decoding stays exact either way)")
    p.add_argument("--policy", type=policy_arg, default="eagle2", metavar="NAME[@KEY=VALUE...]",
                   help="a policy (listed below) or a spec such as eagle2@total=auto@lookup=10; the size flags "
                        "fill what it leaves unset")
    p.add_argument("--top-k", type=positive_int, default=None, help="tree: children per expanded node")
    p.add_argument("--depth", type=positive_int, default=None, help="tree: depth of the deepest draft token")
    p.add_argument("--total-tokens", type=total_tokens_arg, default="auto",
                   help="tree: draft tokens kept by the rerank, or auto (default: sized each cycle for this "
                        "machine from a cached latency calibration)")
    p.add_argument("--lookup", type=int_at_least(0), default=0, metavar="N",
                   help="eagle2 with auto tree size: merge a prompt-lookup chain of up to N tokens copied from "
                        "the context into each tree (0 = off; 10 is the benchmarked setting)")
    p.add_argument("--temperature", type=_float, default=0.0)
    p.add_argument("--top-p", type=_float, default=1.0)
    p.add_argument("--sample-top-k", type=int, default=0, help="sampling top-k filter (0 = off)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--device", default="auto")
    where.add_argument("--device-map", type=device_map_arg, default=None, metavar="auto|balanced|FILE.json",
                       help="spread a target too big for one device over several (accelerate): the inputs go to "
                            "the first, the EAGLE head sits with the last layers; FILE.json = {module name: device}")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--trace", default=None, metavar="FILE", help="write the full trace as JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of coloured text")
    p.add_argument("--no-color", action="store_true")
    return p


def quiet_libraries() -> None:
    """Keep library progress bars and retry warnings off a CLI's one-line errors."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    from huggingface_hub.utils import logging as hub_logging

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hub_logging.set_verbosity_error()


CLI_FLAGS = {"top_k": "--top-k", "depth": "--depth", "total_tokens": "--total-tokens", "lookup": "--lookup"}


def policy_choice(args):
    """The policy of `generate` (eagle2.registry): --policy, with the size flags as fill-ins and
    --lookup as an option that must apply."""
    from eagle2 import registry

    choice = registry.resolve_policy(args.policy, flags=CLI_FLAGS, lookup=args.lookup or None,
                                     defaults={"top_k": args.top_k, "depth": args.depth,
                                               "total_tokens": args.total_tokens})
    return choice


def run_generate(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    quiet_libraries()
    import torch

    import eagle2
    from eagle2.verify import check_sampling

    if not args.prompt.strip():
        raise UsageError("prompt is empty")
    if args.trace and not os.path.isdir(os.path.dirname(os.path.abspath(args.trace))):
        raise UsageError(f"--trace: folder of {args.trace!r} does not exist")
    check_sampling(args.temperature, args.top_p, args.sample_top_k)
    choice = policy_choice(args)  # checked before anything is loaded
    if args.seed is not None:
        torch.manual_seed(args.seed)
    target = eagle2.load_target(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    policy = choice.build(target=target)
    drafter = None
    if policy.needs_drafter:
        drafter = eagle2.load_drafter(target, head=args.head, draft_model=args.draft_model,
                                      draft_vocab=choice.values.get("draft_vocab", args.draft_vocab))
    recorder = eagle2.TraceRecorder(target.tokenizer) if args.trace else None
    result = eagle2.generate_text(
        target, args.prompt, drafter=drafter, policy=policy, chat=not args.raw,
        observers=[recorder] if recorder else [], max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, sample_top_k=args.sample_top_k, seed=args.seed)
    if recorder:
        recorder.trace.save(args.trace)
    summary = {"text": result.text, **result.summary(), "model": target.name,
               "head": args.draft_model or (args.head if drafter else None), "dtype": target.precision}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    colour = not args.no_color and sys.stdout.isatty() or os.environ.get("FORCE_COLOR")
    print(render_tokens(target.tokenizer, result, colour))
    print()
    name = summary["policy"] + (f"+lookup={summary['lookup']}" if summary.get("lookup") else "")
    print(f"[{name}] {summary['new_tokens']} tokens in {summary['seconds']:.2f} s = "
          f"{summary['tokens_per_s']:.1f} tok/s | τ {summary['tau']:.2f} tokens/target forward, "
          f"{summary['mean_accepted']:.2f} per cycle over {summary['cycles']} cycles | "
          f"draft {summary['draft_s']:.2f} s, verify {summary['verify_s']:.2f} s | {target.name}, {summary['dtype']}")
    if colour:
        print(f"legend: {ORIGIN_COLOURS['draft']}accepted draft token\033[0m, target token, {CYCLE_MARK} cycle boundary")
    return 0


def render_tokens(tokenizer, result, colour: bool) -> str:
    """The answer with accepted draft tokens coloured and cycle boundaries marked."""
    if not colour:
        return result.text
    out, last = [], None
    for tok, origin, cyc in zip(result.tokens, result.origins, result.token_cycles):
        if last is not None and cyc != last:
            out.append(CYCLE_MARK)
        last = cyc
        out.append(ORIGIN_COLOURS[origin] + tokenizer.decode([tok], skip_special_tokens=True) + "\033[0m")
    return "".join(out)


def serve_config_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m eagle2 serve-config",
                      description="Print the command that serves a target + EAGLE head + tree on SGLang or vLLM, "
                                  "with notes on what maps (eagle2/serve.py).")
    p.add_argument("--engine", required=True, choices=["sglang", "vllm"])
    p.add_argument("--model", default="default", help="default (served as its hub id) | hub id | local folder")
    p.add_argument("--head", default="default", help="EAGLE head: default | hub id | local folder")
    p.add_argument("--head-kind", default="auto", choices=["auto", "eagle1", "eagle3"],
                   help="head checkpoint format (auto: from the folder's config.json)")
    p.add_argument("--top-k", type=positive_int, default=None, help="tree: children per expanded node")
    p.add_argument("--depth", type=positive_int, default=None, help="tree: depth of the deepest draft token")
    p.add_argument("--total-tokens", type=total_tokens_arg, default="auto",
                   help="tree: draft tokens kept (not counting the root), or auto (a fixed GPU tree)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel size")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=positive_int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object: command, argv, notes, settings")
    return p


def run_serve_config(argv: list[str]) -> int:
    args = serve_config_parser().parse_args(argv)
    from eagle2.serve import ServeSettings, serve_command

    cmd = serve_command(ServeSettings(model=args.model, head=args.head, head_kind=args.head_kind, top_k=args.top_k,
                                      depth=args.depth, total_tokens=args.total_tokens, dtype=args.dtype,
                                      tp=args.tp, host=args.host, port=args.port), args.engine)
    if args.json:
        print(json.dumps(cmd.to_dict(), ensure_ascii=False))
    else:
        print(cmd.shell)
        for note in cmd.notes:
            print(f"# {note}")
    return 0


def _delegate(module: str, argv: list[str], **kwargs) -> int:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise UsageError(f"{module} is not available ({e})") from None
    return int(mod.main(argv, **kwargs) or 0)


COMMANDS = {
    "generate": run_generate,
    "bench": lambda argv: _delegate("eagle2.bench", argv),
    "train": lambda argv: _delegate("eagle2.train", argv, restart_by_exec=True),
    "serve-config": run_serve_config,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m eagle2 {generate,bench,train,serve-config} [options]   (each takes --help)",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (UsageError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse already printed its one-line usage error
        return e.code if isinstance(e.code, int) else 2
    except KeyboardInterrupt:
        return 130
