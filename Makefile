# Two commands do all the set-up: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin NFN_DATA_DIR), undefined)
ifneq ($(wildcard $(SHARED_DATA)),)
export NFN_DATA_DIR := $(SHARED_DATA)
endif
endif

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -q

demo: $(STAMP)
	$(PY) -m benchmarks.demo

clean:
	rm -rf $(VENV) build *.egg-info
