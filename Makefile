# The two commands of the README:
#   make run   — run the pipeline on the embedded default (one process, SQLite, embedded bus)
#   make test  — run the whole test suite against real servers (what .ci/run calls)
#   make docs  — regenerate README's configuration reference from the settings classes
#   make bench — run every benchmark (bench/*.py), each printing its table
.PHONY: setup run test bench docs

setup:
	@scripts/setup.sh

# the embedded default needs no servers: no PostgreSQL, Dovecot, Java or Kafka jars to install
run:
	@scripts/setup.sh --no-servers
	.venv/bin/frontdesk run

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python -m bench.classify
	.venv/bin/python -m bench.intake
	.venv/bin/python -m bench.http
	.venv/bin/python -m bench.dispatch
	.venv/bin/python -m bench.pipeline

docs:
	@scripts/setup.sh --no-servers
	.venv/bin/frontdesk config-reference --write
