"""Answer-stage throughput against batch size: greedy answers to the same prompts, up to 320
tokens, batches end once 70 % of rows finished (the pipeline's defaults). Says whether a bigger
--answer-batch would buy more training data within the time budget.

    PYTHONPATH=. python scripts/answer_throughput.py RUN_FOLDER_WITH_prompts.jsonl
"""
import json, sys, time, torch
from eagle2.models import load_target
from eagle2 import train_data as td

torch.set_num_threads(2)
t = load_target("default", dtype="bfloat16")
stops = td.stop_ids(t)
stop_set = set(stops)
prompts = [json.loads(line)["prompt"] for line in open(f"{sys.argv[1]}/prompts.jsonl")][:256]
pids_all = [td.encode(t.tokenizer, td.chat_prompt(t.tokenizer, p)) for p in prompts]
for bs, nb in [(32, 3), (64, 2), (128, 1)]:
    n_tok, t0 = 0, time.perf_counter()
    for b in range(nb):
        ids, mask = td.left_pad(pids_all[b * bs:(b + 1) * bs], td.pad_id(t))
        new = td._generate(t, ids, mask, max_new_tokens=320, do_sample=False, stops=stops, stop_frac=0.7)
        n_tok += sum(len(td.cut_at_stop(r, stop_set)[0]) for r in new.tolist())
    dt = time.perf_counter() - t0
    print(f"batch {bs}: {n_tok} answer tokens in {dt:.1f}s = {n_tok / dt:.0f} tok/s", flush=True)
