#!/usr/bin/env bash
# Idempotent setup for a fresh Debian/Ubuntu machine: the Debian packages banger
# needs (listed in scripts/debian-packages.txt) and the Python environment (uv).
# It says what it installs and does nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="sudo"; fi
fi

mapfile -t wanted < <(sed -e 's/#.*//' -e '/^\s*$/d' scripts/debian-packages.txt | awk '{print $1}')
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

# Kernel pulls go through apt (apt-get download), so apt needs package lists.
lists_empty=false
compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || lists_empty=true

if [ ${#missing[@]} -gt 0 ] || $lists_empty; then
  echo "setup: refreshing apt package lists"
  $SUDO apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages present (${#wanted[@]})"
fi

# pip --user puts uv in ~/.local/bin, which is often not on PATH. The Makefile and
# scripts look there too; for commands typed by hand, link it next to the other
# system tools when that directory is writable (root), else say how to reach it.
caller_path=$PATH
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv (Python project manager) with pip"
  python3 -m pip install --quiet --user uv 2>/dev/null ||
    python3 -m pip install --quiet --user --break-system-packages uv
fi
if ! PATH=$caller_path command -v uv >/dev/null 2>&1; then
  if [ -w /usr/local/bin ]; then
    ln -sf "$(command -v uv)" /usr/local/bin/uv
    echo "setup: linked uv into /usr/local/bin"
  else
    echo "setup: uv is in ~/.local/bin; add it to PATH: export PATH=\"\$HOME/.local/bin:\$PATH\""
  fi
fi
echo "setup: syncing the Python environment (uv sync --frozen)"
# Precompiled bytecode keeps CLI start-up fast even where PYTHONDONTWRITEBYTECODE is set.
uv sync --frozen --quiet --compile-bytecode
uv run --frozen python -m compileall -q src/banger >/dev/null
echo "setup: done. Try: uv run banger doctor"
