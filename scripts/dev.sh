#!/usr/bin/env bash
# One entry point for a fresh Debian machine with Rust:
#   bash scripts/dev.sh demo   # the load-test tool: herdcache vs baselines (starts its own redis-server)
#   bash scripts/dev.sh test   # the whole test suite (each test starts its own redis-server)
# Installs redis-server with apt-get when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_redis() {
  if command -v redis-server >/dev/null 2>&1; then
    return
  fi
  echo "redis-server not found; installing it with apt-get" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  command -v redis-server >/dev/null || { echo "redis-server still missing after apt-get" >&2; exit 1; }
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
