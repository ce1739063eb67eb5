# Two commands do all the set-up: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin NFN_DATA_DIR), undefined)
ifneq ($(wildcard $(SHARED_DATA)),)
export NFN_DATA_DIR := $(SHARED_DATA)
endif
endif

.PHONY: test demo venv clean

# One venv; each extra has its own stamp, so `make test` then `make demo` installs the `bench` extra as well.
venv: $(VENV)/.installed-test

$(VENV)/.installed-%: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$*]'
	touch $@

# The suite is compile-bound: one pytest worker per core (tests dealt one at a time, so neither worker idles at the end).
test: $(VENV)/.installed-test
	$(PY) -m pytest tests -q -n 2 --dist worksteal --durations=25

demo: $(VENV)/.installed-bench
	$(PY) -m benchmarks.demo

clean:
	rm -rf $(VENV) build *.egg-info
