# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FINREC := $(VENV)/bin/finrec
STAMP := $(VENV)/.installed
DEMO := demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install demo test test-fast lint format chromium benchmarks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[all,dev]"
	touch $(STAMP)

# Debian's Chromium (and an emoji font for the dashboard's badges) for the browser test, driven
# by the playwright package (never a browser download of its own).
chromium:
	@{ command -v chromium >/dev/null 2>&1 && [ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; } || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null; }

$(DEMO)/bank/schema.yaml: | $(STAMP)
	$(FINREC) generate --out $(DEMO)/bank
	$(FINREC) split --data $(DEMO)/bank --out $(DEMO)/split

$(DEMO)/model/manifest.json: $(DEMO)/bank/schema.yaml
	$(FINREC) train --data $(DEMO)/split/train --out $(DEMO)/model

demo: $(DEMO)/model/manifest.json
	$(FINREC) evaluate --model $(DEMO)/model --data $(DEMO)/split/test --json $(DEMO)/model-evaluation.json
	$(FINREC) score --model $(DEMO)/model --data $(DEMO)/split/test --out $(DEMO)/top5.csv --k 5
	@echo && $(FINREC) recommend --model $(DEMO)/model --data $(DEMO)/split/test \
		--customer-id "$$(sed -n 2p $(DEMO)/top5.csv | cut -d, -f1 | tr -d '"')" -k 5 && echo
	@if [ -f Recommendation_Dashboard.py ]; then FINREC_MODEL=$(DEMO)/model FINREC_DATA=$(DEMO)/bank $(VENV)/bin/streamlit run Recommendation_Dashboard.py; fi

# The form of the code: ruff's lint rules and its formatter (pyproject.toml), checked, never rewritten.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# One worker per core (two on the CI machine); a file's tests stay on one worker so its module
# fixtures (a trained model, a server, a Ray cluster) are built once. The slowest tests are
# listed at the end, so that a test which creeps up is seen before the suite nears 10 minutes.
test: lint chromium
	$(PY) -m pytest -n auto --dist loadfile --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile -m "not slow and not browser"

benchmarks: $(STAMP)
	$(PY) benchmarks/quality_default.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/batch_scoring.py
	$(PY) benchmarks/load.py

clean:
	rm -rf $(DEMO) .pytest_cache build
