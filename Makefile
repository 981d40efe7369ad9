# Two commands for a fresh machine (Python 3.11+, Java 17 and Maven for the tests):
#   make demo   -- installs the project into .venv and runs `masb demo` on the embedded broker
#   make test   -- installs the project with its test extras and runs the whole test suite
VENV ?= .venv
PYTHON ?= python3

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/masb demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

bench: $(VENV)/.installed
	for b in bench/bench_*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .masb-demo deploy/kafka/lib
