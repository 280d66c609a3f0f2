#!/usr/bin/env bash
# One entry point for a fresh Debian machine with Rust:
#   bash scripts/dev.sh demo   # the load-test tool: herdcache vs baselines (starts its own redis-server)
#   bash scripts/dev.sh test   # the whole test suite (each test starts its own redis-server)
# Installs redis-server, redis-sentinel and openssl with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_redis() {
  # redis-sentinel for the Sentinel failover test, openssl for the TLS
  # test's throwaway certificate authority.
  if command -v redis-server >/dev/null 2>&1 && command -v redis-sentinel >/dev/null 2>&1 \
    && command -v openssl >/dev/null 2>&1; then
    return
  fi
  echo "redis-server, redis-sentinel or openssl not found; installing them with apt-get" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-sentinel openssl >/dev/null
  for bin in redis-server redis-sentinel openssl; do
    command -v "$bin" >/dev/null || { echo "$bin still missing after apt-get" >&2; exit 1; }
  done
}

case "${1:-}" in
  demo)
    need_redis
    shift
    cargo run --release -p herdcache-loadtest -- "$@"
    ;;
  test)
    need_redis
    shift
    # `cargo test` also builds the examples: the multi-process tests spawn
    # the demo binary as their worker processes.
    cargo test --workspace --all-features "$@"
    ;;
  *)
    echo "usage: bash scripts/dev.sh demo|test" >&2
    exit 2
    ;;
esac
