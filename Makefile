# The two commands of the README:
#   make run   — run the pipeline on the embedded default (one process, SQLite, embedded bus)
#   make test  — run the whole test suite against real servers (what .ci/run calls)
#   make docs  — regenerate README's configuration reference from the settings classes
#   make bench — run every benchmark (bench/*.py), each printing its table
.PHONY: setup run test bench docs

setup:
	@scripts/setup.sh

run: setup
	.venv/bin/frontdesk run

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python -m bench.classify
	.venv/bin/python -m bench.intake
	.venv/bin/python -m bench.http
	.venv/bin/python -m bench.dispatch
	.venv/bin/python -m bench.pipeline

docs: setup
	.venv/bin/frontdesk config-reference --write
