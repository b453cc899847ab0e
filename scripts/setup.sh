#!/usr/bin/env bash
# bash scripts/setup.sh   (make demo / make test call it): system data packages, then the virtualenv.
# Idempotent: reinstalls Python packages only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# Debian packages that carry real datasets: Fashion-MNIST (the demo, tests), Asterisk voice
# prompts (WAV) and their transcripts (the audio modality), Noto Color Emoji (builtin:emoji),
# the espeak-ng speech synthesiser (the spoken emoji names of builtin:emoji-spoken and -bind-*);
# and headless Chromium for screenshots of run reports (`polymodal report --screenshot`).
SYSTEM_PACKAGES=(
  dataset-fashion-mnist asterisk-core-sounds-en-wav asterisk-core-sounds-en
  fonts-noto-color-emoji espeak-ng chromium-headless-shell
)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]} with apt-get"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    echo "setup: installing ${missing[*]} with sudo apt-get"
    sudo apt-get update -q >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  else
    echo "setup: cannot install system packages ${missing[*]} (needs root and apt-get)." >&2
    echo "setup: install them yourself: sudo apt-get install ${missing[*]}" >&2
    echo "setup: continuing; what needs them will say so." >&2
  fi
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: $PYTHON is $("$PYTHON" --version 2>&1); polymodal needs Python >= 3.10 (set PYTHON=...)" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
STAMP="$VENV/.installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ]; then
  echo "setup: installing polymodal and pinned dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, so packages that depend on it do not pull another build.
  "$VENV/bin/python" -m pip install -q -c constraints.txt torch torchvision
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[dev]'
  touch "$STAMP"
fi
# Byte-compile our own code (unchanged files are skipped): every Ray worker imports it, and
# where the environment sets PYTHONDONTWRITEBYTECODE no process would cache it (~0.3 s each).
"$VENV/bin/python" -m compileall -q platform jobs tests benchmarks serve scripts
