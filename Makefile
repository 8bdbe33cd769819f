# pcloud — the two commands a newcomer needs:
#   make run    start pcloud on the embedded defaults, deploy the example, break it, watch it heal
#   make test   the whole test suite (unit, integration against a private RabbitMQ node, slow e2e)

PY := .venv/bin/python

.PHONY: run vm-demo test test-fast lint bench setup setup-tests clean

setup:
	scripts/setup-host

setup-tests:
	scripts/setup-host --tests

run: setup
	$(PY) -m pcloudsh.demo

vm-demo: setup-tests
	$(PY) -m pcloudsh.vm_demo

test: setup-tests
	$(PY) -m pytest

test-fast: setup-tests
	$(PY) -m pytest -m "not slow"

lint: setup-tests
	.venv/bin/ruff check .

bench: setup-tests
	$(PY) bench/bus.py
	$(PY) bench/transition.py
	$(PY) bench/agent.py
	$(PY) bench/mttr.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache .ruff_cache
