# Two commands matter: `make run` and `make test`. Both bootstrap .venv from
# the pinned requirements the first time (and whenever they change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-services lint typecheck bench evaluate clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) run.py $(ARGS)

# The operations tests run promtool and a Prometheus server (Debian package `prometheus`),
# amtool and an Alertmanager (Debian package `prometheus-alertmanager`);
# the delivery tests start private redis-server processes; the dashboard's browser tests
# drive Debian's chromium (with a Chinese font for the zh-CN pages).
test-services:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; } || \
		{ echo "cannot install the Debian package prometheus (promtool); the ops tests need it" >&2; exit 1; }
	@command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-alertmanager >/dev/null; } || \
		{ echo "cannot install the Debian package prometheus-alertmanager (amtool); the alerting tests need it" >&2; exit 1; }
	@command -v redis-server >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } || \
		{ echo "the tests need redis-server: apt-get install -y redis-server" >&2; exit 1; }
	@command -v chromium >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "the dashboard's browser tests need chromium: apt-get install -y chromium" >&2; exit 1; }
	@fc-list :lang=zh 2>/dev/null | grep -q . || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null; } || \
		{ echo "the zh-CN screenshots need a Chinese font: apt-get install -y fonts-wqy-microhei" >&2; exit 1; }

test: $(STAMP) test-services
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench.throughput

evaluate: $(STAMP)
	$(PY) run.py evaluate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
