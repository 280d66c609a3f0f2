#!/usr/bin/env bash
# One Redis node's ceiling on this machine: redis-benchmark GET and EVALSHA
# (a script shaped like herdcache's read-or-lock probe) against a throwaway
# redis-server on a free loopback port, with the server's CPU per command
# from INFO (used_cpu_user + used_cpu_sys). Usage: saturation.sh [rounds]
set -euo pipefail
ROUNDS=${1:-3}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
RPID=$!
trap 'kill "$RPID" 2>/dev/null' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
cpu() { redis-cli -p "$PORT" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/{s+=$2} END{printf "%.6f", s}'; }
# The probe's shape: GET the value; if absent, SET NX PX the lock.
SHA=$(redis-cli -p "$PORT" script load "local v = redis.call('GET', KEYS[1]) if v then return v end if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', 3000) then return 1 end return redis.call('PTTL', KEYS[2])")
N=300000
for round in $(seq "$ROUNDS"); do
  for args in "-c 50" "-c 50 -P 16"; do
    for what in get probe; do
      c0=$(cpu)
      if [ "$what" = get ]; then
        out=$(timeout 120 redis-benchmark -p "$PORT" -n $N -r 100000 $args -q -t get 2>&1 | tr '\r' '\n' | grep 'GET:' | tail -1)
      else
        out=$(timeout 120 redis-benchmark -p "$PORT" -n $N -r 100000 $args -q evalsha "$SHA" 2 v:__rand_int__ l:__rand_int__ t 2>&1 | tr '\r' '\n' | grep -i 'evalsha' | tail -1)
      fi
      c1=$(cpu)
      rps=$(echo "$out" | grep -o '[0-9.]* requests per second' | cut -d' ' -f1)
      echo "round $round $what $args: $rps req/s, server CPU $(python3 -c "print(round(($c1-$c0)*1e6/$N, 2))") us/op"
    done
  done
done
