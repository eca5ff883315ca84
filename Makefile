# The two commands of the README:
#   make run   — run the pipeline on the embedded default (one process, SQLite, embedded bus)
#   make test  — run the whole test suite against real servers (what .ci/run calls)
#   make docs  — regenerate README's configuration reference from the settings classes
.PHONY: setup run test bench docs

setup:
	@scripts/setup.sh

run: setup
	.venv/bin/frontdesk run

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python -m bench

docs: setup
	.venv/bin/frontdesk config-reference --write
