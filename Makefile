# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test docs lint bench venv dist-check

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[dev]"
	touch $@

demo: venv
	$(VENV)/bin/hcl-train

test: venv
	$(PY) -m pytest -q

docs: venv
	$(VENV)/bin/mkdocs build --strict

lint: venv
	$(VENV)/bin/ruff check hcl_lightning tests benchmarks examples

# sdist + wheel, twine check, the wheel's commands in a fresh venv (.ci/check_wheel)
dist-check: venv
	VENV=$(VENV) bash .ci/check_wheel

bench: venv
	$(PY) benchmarks/bench_loss.py
