# syntax=docker/dockerfile:1
# acpd with the demo agent and the built-in plugins. Build from the repository root:
#   docker build -t acpd .
#   docker run --rm -p 4170:4170 -e ACPD_TOKEN=$(openssl rand -hex 32) acpd
# It binds 0.0.0.0, so acpd refuses to start without a token (ACPD_TOKEN). docs/DEPLOY.md adds a real agent.

# --- build: the daemon, and the built-in plugins for wasm32-wasip2 (host/build.rs embeds them) ---
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# host/build.rs builds plugins/* with the `guest` profile into target/wasm-guests and embeds them;
# `acpd plugin inspect builtin:redact` below fails the build if they were not embedded.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked -p acpd \
 && install -m 0755 target/release/acpd /usr/local/bin/acpd \
 && acpd plugin inspect builtin:redact >/dev/null

# --- runtime: slim, non-root ---
FROM debian:bookworm-slim
# tini as PID 1 reaps whatever the agents' tools leave behind; curl for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/acpd acpd \
 && mkdir -p /workspace && chown acpd:acpd /workspace
COPY --from=build /usr/local/bin/acpd /usr/local/bin/acpd
USER acpd
WORKDIR /workspace
# Every setting is also a flag or an acpd.toml key (README, "Configuration"). A non-loopback bind
# requires a token: pass ACPD_TOKEN (or mount acpd.toml and set ACPD_CONFIG) at run time.
ENV ACPD_HOSTNAME=0.0.0.0 \
    ACPD_PORT=4170 \
    ACPD_WORKSPACE=/workspace \
    XDG_CACHE_HOME=/home/acpd/.cache \
    ACPD_LOG=info
EXPOSE 4170
# /health stays open without the token unless ACPD_REQUIRE_AUTH is set (then probe with the token).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${ACPD_PORT}/health" >/dev/null || exit 1
# SIGTERM drains: new work gets 503 daemon_draining, sessions get session_died, children are stopped.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "acpd"]
CMD ["serve"]
