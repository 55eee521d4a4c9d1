#!/usr/bin/env bash
# A built wheel works, not only the editable install: build it, install it alone into a
# fresh venv (its dependencies borrowed from the project's venv, so nothing is downloaded
# but the build backend), and run commands from a folder outside the checkout.
set -euo pipefail
venv="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$venv/bin/pip" wheel -q --no-deps -w "$work/dist" . >/dev/null
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-deps --no-index "$work"/dist/parley-*.whl
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
wsite="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$site" > "$wsite/parley-deps.pth"
cd "$work"
export PARLEY_DB="$work/smoke.db"
where="$("$work/venv/bin/python" -c 'import core; print(core.__file__)')"
case "$where" in "$wsite"/*) ;; *) echo "wheel smoke: core imported from $where, not the wheel"; exit 1;; esac
"$work/venv/bin/parley" personas --json | grep -q '"id": "riley"'
"$work/venv/bin/parley" providers --json | grep -q '"id": "openai"'
"$work/venv/bin/parley" help >/dev/null
"$work/venv/bin/parley" policy show >/dev/null
echo ">> wheel smoke test: the built wheel runs parley personas, providers, help and policy"
