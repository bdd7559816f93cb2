"""The target's forward latency against the number of new tokens, for each precision, on this CPU.

Speculative decoding pays when a forward over a tree of n tokens costs little more than a
one-token forward. How much more depends on the CPU and the precision: on CPUs without native
bf16 (AVX2 only), fp32's few-row matrix products cost ~1.7x the one-row one and bf16 is emulated,
while fp16-packed weights (`--dtype fp16-weights`, eagle2.packed) stay nearly flat; on CPUs with
AMX, bf16 with weights packed for oneDNN (what `--dtype bfloat16` runs there) stays nearly flat to
32 tokens. This prints the curve for each precision (median of --repeats, after a prefix of
--prefix tokens):

    PYTHONPATH=. python scripts/forward_latency.py [--dtypes float32,bfloat16,fp16-weights] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import DynamicCache

import eagle2
from eagle2.precision import cpu_model


def curve(model, sizes, prefix: int, repeats: int) -> dict[int, float]:
    """Milliseconds of a forward over n new tokens after `prefix` cached ones, for each n."""
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    cache = DynamicCache()
    with torch.inference_mode():
        model(torch.randint(0, vocab, (1, prefix), generator=gen), cache=cache, use_cache=True)
        out = {}
        for n in sizes:
            x = torch.randint(0, vocab, (1, n), generator=gen)
            times = []
            for _ in range(repeats + 2):  # two warm-ups
                t0 = time.perf_counter()
                model(x, cache=cache, use_cache=True)
                times.append(time.perf_counter() - t0)
                cache.crop(-n)  # back to the prefix
            out[n] = round(1e3 * statistics.median(times[2:]), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtypes", default="float32,bfloat16,fp16-weights")
    ap.add_argument("--sizes", default="1,2,4,8,16,32")
    ap.add_argument("--prefix", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "prefix": args.prefix, "ms": {}}
    for dtype in args.dtypes.split(","):
        target = eagle2.load_target(args.model, dtype=dtype, device="cpu")
        ms = curve(target.model, sizes, args.prefix, args.repeats)
        result["ms"][target.precision] = ms
        print(f"{target.precision:>13}: " + "  ".join(f"{n} tok {t:.1f} ms ({t / ms[sizes[0]]:.2f}x)"
                                                      for n, t in ms.items()), flush=True)
        del target
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
