"""Robustness check of the Tree Lab: sequential and concurrent runs against a local app.

    PYTHONPATH=. python scripts/soak_app.py                      # 20 sequential, then 4 users x 2 runs
    PYTHONPATH=. python scripts/soak_app.py --url http://127.0.0.1:7860   # an app you started yourself

Starts `python app.py` on a free loopback port (unless --url), drives it with gradio_client,
prints the server's RSS before and after, and exits non-zero on any error or when the RSS grew
by more than --max-growth-mb after the warm-up. Request counts are bounded by the flags.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
MAX_REQUESTS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def wait_up(url: str, proc: subprocess.Popen | None, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"app did not answer at {url} within {timeout:.0f} s")
            time.sleep(0.5)


def default_head() -> str:
    sys.path.insert(0, str(ROOT))
    from eagle2.draft import DEFAULT_HEADS

    shipped = all((f / "config.json").exists() for f in DEFAULT_HEADS.values())
    return "default" if shipped else "self"


def run_args(prompt: str, head: str, n: int, **over) -> list:
    p = dict(prompt=prompt, target="default", head=head, policy="eagle2", top_k=4, depth=5, total_tokens=12,
             temperature=0.0, top_p=1.0, max_new_tokens=n, seed=0, color_by="value", show_dropped=True,
             calib_by="value")
    p.update(over)
    return list(p.values())


def status_of(result) -> str:
    return str(result[0]) if isinstance(result, (list, tuple)) else str(result)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running app (loopback only); default: start one")
    ap.add_argument("--sequential", type=int, default=20)
    ap.add_argument("--concurrent", type=int, default=4, help="simultaneous users")
    ap.add_argument("--rounds", type=int, default=2, help="runs per concurrent user")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--head", default="auto", help="auto = the default head when shipped, else self")
    ap.add_argument("--max-growth-mb", type=float, default=120.0)
    args = ap.parse_args()
    total = args.sequential + args.concurrent * args.rounds
    if total > MAX_REQUESTS:
        raise SystemExit(f"{total} requests is more than this script's bound of {MAX_REQUESTS}")

    from gradio_client import Client, handle_file

    head = default_head() if args.head == "auto" else args.head
    proc = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--url must be a loopback address")
        url = args.url.rstrip("/") + "/"
    else:
        port = free_port()
        env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
                   GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT), EAGLE2_APP_HEAD=head)
        log = open(Path(tempfile.gettempdir()) / "soak_app.log", "w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
    errors: list[str] = []
    try:
        wait_up(url, proc)
        pid = proc.pid if proc else None
        print(f"app at {url} (pid {pid}), head={head}, RSS at start: {rss_mb(pid) or float('nan'):.0f} MiB")
        client = Client(url, verbose=False)

        t0 = time.time()
        warm = client.predict(*run_args("Say hello.", head, args.max_new_tokens), api_name="/run")
        if "Done" not in status_of(warm):
            errors.append(f"warm-up: {status_of(warm)[:200]}")
        rss0 = rss_mb(pid)
        print(f"warm-up run: {time.time() - t0:.1f} s, RSS after warm-up: {rss0 or float('nan'):.0f} MiB")

        # bad input must come back as messages, not failures
        checks = [  # (name, arguments, expected status text, or an expected refusal by Gradio itself)
            ("empty prompt", run_args("   ", head, args.max_new_tokens), "type a prompt", None),
            ("tree too big", run_args("Hi", head, 8, top_k=2, depth=2, total_tokens=50), "Bad tree size", None),
            ("too many tokens", run_args("Hi", head, 10**6), "max_new_tokens", "greater than maximum"),
        ]
        for name, a, expect, refusal in checks:
            try:
                out = client.predict(*a, api_name="/run")
                if expect not in status_of(out):
                    errors.append(f"{name}: unexpected status {status_of(out)[:200]}")
            except Exception as e:
                if not (refusal and refusal in str(e)):
                    errors.append(f"{name}: {type(e).__name__}: {e}")
        bad = Path(tempfile.gettempdir()) / "soak-not-a-trace.json"
        bad.write_text("this is not json")
        try:
            out = client.predict(handle_file(str(bad)), "value", True, "value", api_name="/open_trace")
            if "not valid JSON" not in status_of(out):
                errors.append(f"bad upload: unexpected status {status_of(out)[:200]}")
        except Exception as e:
            errors.append(f"bad upload: {type(e).__name__}: {e}")

        t0 = time.time()
        for i in range(args.sequential):
            try:
                out = client.predict(*run_args(f"Give me fact number {i + 1} about the sea.", head,
                                               args.max_new_tokens), api_name="/run")
                if "Done" not in status_of(out):
                    errors.append(f"sequential {i}: {status_of(out)[:200]}")
            except Exception as e:
                errors.append(f"sequential {i}: {type(e).__name__}: {e}")
            if (i + 1) % 5 == 0:
                print(f"  after {i + 1} sequential runs: RSS {rss_mb(pid) or float('nan'):.0f} MiB", flush=True)
        rss1 = rss_mb(pid)
        print(f"{args.sequential} sequential runs: {time.time() - t0:.1f} s, RSS {rss1 or float('nan'):.0f} MiB")

        def user(u: int):
            c = Client(url, verbose=False)
            for r in range(args.rounds):
                try:
                    out = c.predict(*run_args(f"User {u} asks question {r}: what is a tree?", head,
                                              args.max_new_tokens), api_name="/run")
                    if "Done" not in status_of(out):
                        errors.append(f"user {u} run {r}: {status_of(out)[:200]}")
                except Exception as e:
                    errors.append(f"user {u} run {r}: {type(e).__name__}: {e}")

        t0 = time.time()
        users = [threading.Thread(target=user, args=(u,)) for u in range(args.concurrent)]
        for t in users:
            t.start()
        for t in users:
            t.join(600)
        rss2 = rss_mb(pid)
        print(f"{args.concurrent} concurrent users x {args.rounds} runs: {time.time() - t0:.1f} s, "
              f"RSS {rss2 or float('nan'):.0f} MiB")
        if rss0 and rss2:
            growth = rss2 - rss0
            print(f"RSS before (after warm-up) {rss0:.0f} MiB -> after {rss2:.0f} MiB: {growth:+.0f} MiB")
            if growth > args.max_growth_mb:
                errors.append(f"RSS grew by {growth:.0f} MiB (> {args.max_growth_mb:.0f})")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    if errors:
        print(f"FAILED: {len(errors)} error(s)")
        for e in errors:
            print("  -", e)
        return 1
    print("OK: no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
