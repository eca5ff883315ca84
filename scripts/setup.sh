#!/usr/bin/env bash
# Installs what a fresh machine lacks to run and test Frontdesk. Idempotent and quiet when done:
#   - Debian packages: PostgreSQL, Dovecot (IMAP), isync (mbsync, for the intake benchmark),
#     Java 17 + Maven (for the real Kafka broker used by the tests)
#   - a virtualenv in .venv with Frontdesk and its test + model extras
#   - the Apache Kafka broker jars from Maven Central (scripts/kafka-jars.sh)
# Usage: scripts/setup.sh [--no-model] [--no-servers]
set -euo pipefail
cd "$(dirname "$0")/.."

want_model=1
want_servers=1
for arg in "$@"; do
  case "$arg" in
    --no-model) want_model=0 ;;
    --no-servers) want_servers=0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

say() { echo "setup: $*" >&2; }

install_debian_packages() {
  local missing=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
  command -v mbsync >/dev/null 2>&1 || missing+=(isync)
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    say "missing Debian packages ${missing[*]} and not root: install them, then re-run"; return 1
  fi
  local sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
  say "installing Debian packages: ${missing[*]}"
  # The packages' own service starts are not wanted: tests run private instances.
  $sudo apt-get update -qq
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_venv() {
  local extras="test"; [ "$want_model" = 1 ] && extras="test,model"
  local stamp=".venv/.frontdesk-installed"
  local want; want="$(sha256sum pyproject.toml | cut -c1-16)-$extras"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/frontdesk ]; then
    return 0
  fi
  [ -x .venv/bin/python ] || { say "creating .venv"; python3 -m venv .venv; }
  say "installing Frontdesk into .venv (extras: $extras; the first time takes a few minutes: torch)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[$extras]" >/dev/null
  echo "$want" > "$stamp"
}

if [ "$want_servers" = 1 ]; then install_debian_packages; fi
install_venv
if [ "$want_servers" = 1 ]; then scripts/kafka-jars.sh >/dev/null; fi
