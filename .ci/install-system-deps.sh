#!/usr/bin/env bash
# Install the system packages the test suite needs that pip cannot provide.
# Today that is only Debian's Chromium, which tests/test_book.py uses (headless)
# to check that every book page typesets its math offline.
# Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: /usr/bin/chromium is missing and this script needs root (or sudo) to install it." >&2
    echo "       Run as root: apt-get update && apt-get install -y --no-install-recommends chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium
/usr/bin/chromium --version
