#!/usr/bin/env bash
# The console's pictures in docs/ (the README shows them): the `screenshots` test of
# tests/tests/console.rs drives the real daemon and demo agent in headless Chromium (Debian's
# `chromium`, installed if missing and we are root) and writes the session list, a turn with a
# tool call and its diff, a permission request, that turn's trace, and the phone layout in dark mode.
#   tests/scripts/console-screenshots.sh [DIR]      (default: docs)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="$(realpath -m "${1:-docs}")"
if ! command -v chromium >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "install Debian's chromium first"; exit 1; }
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
mkdir -p "$out"
ACPD_CONSOLE_SCREENSHOTS="$out" cargo test -q -p acpd-tests --test console -- --exact screenshots --nocapture
ls -1 "$out"/console-*.png
