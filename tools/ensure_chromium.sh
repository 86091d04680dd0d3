#!/usr/bin/env bash
# Headless Chromium (Debian's `chromium` package) for tests/test_docs_site.py: installed with
# apt-get when it is not on PATH. Without root, it says what to run instead.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium is not installed: run 'sudo apt-get install chromium' (Debian/Ubuntu), then make test again" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
