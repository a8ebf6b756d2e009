#!/usr/bin/env bash
# Creates or reuses .venv (Python 3.11) and installs maskclip-d2 with everything it needs.
# Idempotent: a stamp keyed on the hash of the install inputs skips what is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  PYTHON=python3
fi
if [ ! -x "$VENV/bin/python" ]; then
  ver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$ver" = "3.11" ] || { echo "maskclip-d2 needs Python 3.11 (found $ver at $PYTHON); set PYTHON=/path/to/python3.11" >&2; exit 1; }
  echo "[setup] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

inputs="requirements.txt requirements-test.txt setup.py install/install_detectron2.py $(ls install/patches/detectron2/*.patch install/patches/lvis/*.patch)"
key=$(cat $inputs | sha256sum | cut -c1-16)
stamp="$VENV/.maskclip-installed-$key"
if [ -f "$stamp" ]; then
  echo "[setup] environment up to date ($stamp)"
  exit 0
fi

pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
echo "[setup] installing the pinned stack (requirements.txt, requirements-test.txt)"
"${pip[@]}" install --quiet -r requirements.txt -r requirements-test.txt 2> >(grep -v "is ignored: it is neither" >&2)
"$VENV/bin/python" install/install_detectron2.py 2> >(grep -v "is ignored: it is neither" >&2)
echo "[setup] installing maskclip-d2 (editable)"
"${pip[@]}" install --quiet --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2)
"${pip[@]}" check >/dev/null || "${pip[@]}" check
rm -f "$VENV"/.maskclip-installed-*
touch "$stamp"
echo "[setup] done"
