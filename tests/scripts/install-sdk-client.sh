#!/usr/bin/env bash
# Installs qwen's official client, `@qwen-code/sdk` (its DaemonClient), exactly as pinned by
# tests/sdk-client/package.json and package-lock.json (`npm ci`), cached outside the clone under
# $ACPD_SDK_CLIENT_DIR (default $HOME/.cache/acpd-ci/sdk-client) in a directory named for the lock
# file's hash, and exports
#   ACPD_QWEN_SDK_DIR  the install directory (its node_modules holds @qwen-code/sdk)
# for tests/tests/official_client.rs, which runs tests/sdk-client/drive.mjs with $ACPD_NODE22
# (tests/scripts/install-agents.sh). A failed install leaves ACPD_QWEN_SDK_DIR unset (the test then
# prints "skipped: <reason>"): it never fails the caller. The install is bounded by `timeout` and
# moved into place only when complete, so an interrupted one is retried next time.
#
# Source it (`. tests/scripts/install-sdk-client.sh`, as .ci/run does) to get the variable in the
# current shell; run it to print it as an `export` line.

acpd_install_sdk_client() {
  local src
  src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../sdk-client" && pwd)" || return 0
  local root="${ACPD_SDK_CLIENT_DIR:-$HOME/.cache/acpd-ci/sdk-client}"
  local limit="${ACPD_AGENTS_INSTALL_TIMEOUT:-600}"
  local file=node_modules/@qwen-code/sdk/dist/daemon/index.js
  unset ACPD_QWEN_SDK_DIR
  local hash dir start
  hash="$(sha256sum "$src/package-lock.json" | cut -c1-16)" || return 0
  dir="$root/qwen-code-sdk-$hash"
  if [ ! -e "$dir/$file" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      echo "warning: npm not found: @qwen-code/sdk not installed (tests/tests/official_client.rs will be skipped)" >&2
      return 0
    fi
    start=$(date +%s)
    echo "== installing @qwen-code/sdk (tests/sdk-client/package-lock.json) into $dir" >&2
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial" || return 0
    cp "$src/package.json" "$src/package-lock.json" "$dir.partial/" || return 0
    # Peer dependencies (typescript, for the SDK's types) are not needed to run it.
    if (cd "$dir.partial" &&
      timeout "$limit" npm ci --omit=peer --no-audit --no-fund --loglevel=error >install.log 2>&1 &&
      [ -e "$file" ]); then
      rm -rf "$dir" && mv "$dir.partial" "$dir"
      echo "== @qwen-code/sdk installed in $(($(date +%s) - start)) s" >&2
    else
      echo "warning: @qwen-code/sdk did not install; tests/tests/official_client.rs will be skipped" >&2
      [ -f "$dir.partial/install.log" ] && tail -n 20 "$dir.partial/install.log" >&2
      rm -rf "$dir.partial"
      return 0
    fi
  fi
  export ACPD_QWEN_SDK_DIR="$dir"
  return 0
}

acpd_install_sdk_client
unset -f acpd_install_sdk_client

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  [ -n "${ACPD_QWEN_SDK_DIR:-}" ] && echo "export ACPD_QWEN_SDK_DIR=$ACPD_QWEN_SDK_DIR"
  exit 0
fi
