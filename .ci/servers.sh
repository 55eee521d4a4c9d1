#!/usr/bin/env bash
# PostgreSQL and Redis for the tests (tests/servers.py starts its own on loopback ports;
# this only makes sure the programs are there). Installs the Debian packages when they
# are missing and this runs as root or with password-less sudo; otherwise prints the
# command and leaves it to you (with PARLEY_REQUIRE_SERVERS=1 the server tests then fail,
# saying what is missing, instead of skipping).
set -euo pipefail

have_postgres() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null
}
have_redis() { command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1; }

missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo ">> Missing for the tests: ${missing[*]}. Install with:"
  echo "     sudo apt-get install -y ${missing[*]}"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo ">> Missing for the tests: ${missing[*]} (no apt-get here: install them with your package manager)."
  exit 0
fi
echo ">> Installing ${missing[*]} for the tests (apt-get)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
have_postgres && have_redis
