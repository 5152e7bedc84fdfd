# `make demo` and `make test` each set up their own virtualenv first (torch from the local CPU wheel).
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: demo test docs bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[test,collect]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dtmerge demo --out demo-out --resume

test: $(STAMP)
	$(PY) -m pytest -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/attention_speed.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/eval_speed.py
	$(PY) benchmarks/make_speed.py
	$(PY) benchmarks/fisher_speed.py
	$(PY) benchmarks/merge_scale.py
	$(PY) benchmarks/lm_cost.py
	$(PY) benchmarks/executor_speed.py
	$(PY) benchmarks/align_speed.py
	$(PY) benchmarks/mini_cost.py

clean:
	rm -rf $(VENV) demo-out site
