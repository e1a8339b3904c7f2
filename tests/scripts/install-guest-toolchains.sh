#!/usr/bin/env bash
# Installs the toolchains that build Python and JavaScript plugins (pinned), cached outside the clone,
# and exports one variable per toolchain that installed:
#   ACPD_COMPONENTIZE_PY  componentize-py (sdk/python/requirements-build.txt), in a venv under
#                         $ACPD_GUEST_TOOLS_DIR/py-guests (default $HOME/.cache/acpd-ci/py-guests)
#   ACPD_COMPONENTIZE_JS  componentize-js (sdk/js/package.json + package-lock.json, `npm ci`), under
#                         $ACPD_GUEST_TOOLS_DIR/js-guests; run it with $ACPD_NODE22 when set, else `node`
# A failed install only leaves its variable unset (the polyglot plugin tests then print "skipped: <reason>"):
# it never fails the caller. Each install is bounded by `timeout`, keyed by the hash of its pin file (a new pin
# installs next to the old one) and moved into place only when complete.
#
# Source it (`. tests/scripts/install-guest-toolchains.sh`, as .ci/run does) to get the variables in the
# current shell; run it to print them as `export` lines.

acpd_install_guest_toolchains() {
  local root repo base limit start pids=()
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  base="${ACPD_GUEST_TOOLS_DIR:-$HOME/.cache/acpd-ci}"
  limit="${ACPD_GUEST_TOOLS_INSTALL_TIMEOUT:-600}"
  start=$(date +%s)
  local py_pins="$repo/sdk/python/requirements-build.txt"
  local py_dir
  py_dir="$base/py-guests/$(sha256sum "$py_pins" | cut -c1-16)"
  local js_dir
  js_dir="$base/js-guests/$(cat "$repo/sdk/js/package.json" "$repo/sdk/js/package-lock.json" | sha256sum | cut -c1-16)"
  mkdir -p "$base/py-guests" "$base/js-guests" || return 0

  if [ ! -x "$py_dir/bin/componentize-py" ]; then
    if command -v python3 >/dev/null 2>&1; then
      echo "== installing componentize-py into $py_dir" >&2
      rm -rf "$py_dir.partial"
      (
        timeout "$limit" python3 -m venv "$py_dir.partial" >"$base/py-guests/install.log" 2>&1 &&
          timeout "$limit" "$py_dir.partial/bin/pip" install -q --disable-pip-version-check -r "$py_pins" \
            >>"$base/py-guests/install.log" 2>&1 &&
          rm -rf "$py_dir" && mv "$py_dir.partial" "$py_dir" &&
          # A venv's scripts name its own path: fix them for the final one.
          sed -i "s|$py_dir.partial|$py_dir|g" "$py_dir"/bin/* 2>/dev/null
      ) &
      pids+=($!)
    else
      echo "warning: python3 not found: Python plugins will not be built (their tests will be skipped)" >&2
    fi
  fi
  if [ ! -e "$js_dir/node_modules/.bin/componentize-js" ]; then
    if command -v npm >/dev/null 2>&1; then
      echo "== installing componentize-js into $js_dir" >&2
      rm -rf "$js_dir.partial"
      mkdir -p "$js_dir.partial"
      cp "$repo/sdk/js/package.json" "$repo/sdk/js/package-lock.json" "$js_dir.partial/"
      (
        cd "$js_dir.partial" &&
          timeout "$limit" npm ci --no-audit --no-fund --loglevel=error >"$base/js-guests/install.log" 2>&1 &&
          cd / && rm -rf "$js_dir" && mv "$js_dir.partial" "$js_dir"
      ) &
      pids+=($!)
    else
      echo "warning: npm not found: JavaScript plugins will not be built (their tests will be skipped)" >&2
    fi
  fi
  local pid
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  [ ${#pids[@]} -gt 0 ] && echo "== guest toolchains installed in $(($(date +%s) - start)) s" >&2

  if [ -x "$py_dir/bin/componentize-py" ]; then
    export ACPD_COMPONENTIZE_PY="$py_dir/bin/componentize-py"
  else
    unset ACPD_COMPONENTIZE_PY
    echo "warning: componentize-py did not install; Python plugin tests will be skipped" >&2
    [ -f "$base/py-guests/install.log" ] && tail -n 20 "$base/py-guests/install.log" >&2
    rm -rf "$py_dir.partial"
  fi
  if [ -e "$js_dir/node_modules/.bin/componentize-js" ]; then
    export ACPD_COMPONENTIZE_JS="$js_dir/node_modules/.bin/componentize-js"
  else
    unset ACPD_COMPONENTIZE_JS
    echo "warning: componentize-js did not install; JavaScript plugin tests will be skipped" >&2
    [ -f "$base/js-guests/install.log" ] && tail -n 20 "$base/js-guests/install.log" >&2
    rm -rf "$js_dir.partial"
  fi
  return 0
}

acpd_install_guest_toolchains
unset -f acpd_install_guest_toolchains

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  for v in ACPD_COMPONENTIZE_PY ACPD_COMPONENTIZE_JS; do
    [ -n "${!v:-}" ] && echo "export $v=${!v}"
  done
  exit 0
fi
