"""Trace files for the app: uploads checked before anything is drawn, downloads, the shipped examples."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

from eagle2.trace import Trace
from viz.data import cycle_view, policy_label, summary

from .config import EXAMPLE_TRACES, MAX_UPLOAD_BYTES


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


def load_trace_path(path, max_bytes: int | None = None) -> Trace:
    """Read an uploaded / example trace, with clear errors for bad files; uploads are limited to
    MAX_UPLOAD_BYTES (the shipped examples pass their own limit)."""
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    if path is None:
        raise ValueError("No file was uploaded.")
    path = Path(getattr(path, "name", path))
    if not path.is_file():
        raise ValueError(f"Trace file {path.name} was not found.")
    size = path.stat().st_size
    if size > max_bytes:  # refused before it is read, let alone parsed
        raise ValueError(f"That trace is too large ({_size(size)}; at most {_size(max_bytes)}).")
    if size == 0:
        raise ValueError("That file is empty: not an eagle2 trace.")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"Trace file {path.name} cannot be read ({e.strerror or type(e).__name__}).") from None
    trace = Trace.from_json(data)  # a one-line ValueError naming the bad field on bad input
    check_trace(trace)
    return trace


def check_trace(trace: Trace) -> None:
    """Reject traces that parse but cannot be drawn (so bad uploads fail here, not in a figure),
    naming the cycle that cannot be drawn."""
    for i in range(len(trace.cycles)):
        try:
            cycle_view(trace, i)
        except Exception as e:
            raise ValueError(f"trace is malformed: cycle {i} cannot be drawn ({_reason(e)})") from None
    try:
        summary(trace)
    except Exception as e:
        raise ValueError(f"trace is malformed: its summary cannot be computed ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:160]
    if isinstance(e, KeyError):
        return f"it refers to {text}, which it does not hold"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def example_traces() -> list[tuple[str, str]]:
    """(label, path) of the shipped traces."""
    out = []
    for f in sorted(EXAMPLE_TRACES.glob("*.json")):
        label = f.stem
        try:
            head = json.loads(f.read_text())
            meta, s = head.get("meta", {}), head.get("summary", {})
            label = f"{f.stem} · {policy_label({**meta, **s})} · τ {s.get('tau', 0):.2f}"
        except Exception:
            pass
        out.append((label, str(f)))
    return out


def trace_file(trace: Trace) -> str:
    """Write a trace where the download button can serve it (old ones are pruned)."""
    folder = Path(tempfile.gettempdir()) / "eagle2-tree-lab"
    folder.mkdir(exist_ok=True)

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:  # another request pruned it meanwhile
            return 0.0

    old = sorted(folder.glob("trace-*.json"), key=mtime)
    for f in old[:-40]:
        f.unlink(missing_ok=True)
    path = folder / f"trace-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(trace.to_json())
    return str(path)


def best_cycle(trace: Trace) -> int:
    """The first cycle that accepted the most draft tokens (a telling tree to open a trace on)."""
    best, most = 0, -1
    for i, rec in enumerate(trace.cycles):
        acc = len(rec.verification.accepted_path) - 1 if rec.verification else 0
        if acc > most:
            best, most = i, acc
    return best
