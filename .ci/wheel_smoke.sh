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
# Output goes to files before grep reads it: `grep -q` leaving early would break the pipe.
"$work/venv/bin/parley" personas --json > "$work/personas.json"
grep -q '"id": "riley"' "$work/personas.json"
"$work/venv/bin/parley" providers --json > "$work/providers.json"
grep -q '"id": "openai"' "$work/providers.json"
"$work/venv/bin/parley" help >/dev/null
"$work/venv/bin/parley" policy show >/dev/null
# The front-ends are in the wheel too (what the container runs): their command tables build.
"$work/venv/bin/parley" slack manifest > "$work/manifest.json"
grep -q '"/ask"' "$work/manifest.json"
"$work/venv/bin/parley" discord commands > "$work/commands.json"
grep -q '"name": "ask"' "$work/commands.json"
echo ">> wheel smoke test: the built wheel runs parley personas, providers, help, policy, slack manifest and discord commands"
