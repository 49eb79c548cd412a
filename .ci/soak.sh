#!/usr/bin/env bash
# The soak: examples/payments_server and examples/cache_two_instances under a bounded load
# for SOAK_SECS (default 60) against a Redis this script starts, which is killed (kill -9)
# a third of the way in and restarted 2 s later on the same port. Both examples must ride
# through it: no panic, exit 0. Each prints what its clients were answered.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SOAK_SECS:-60}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
start_redis() {
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --daemonize no >>"$dir/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "redis-server did not start" >&2
  return 1
}
cleanup() { kill -9 "$redis_pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

cargo build --locked --all-features --example payments_server --example cache_two_instances
start_redis
export REDIS_URL="redis://127.0.0.1:$port" FLOODWALL_SOAK_SECS="$secs"
started=$(date +%s)
target/debug/examples/payments_server >"$dir/payments.log" 2>&1 &
payments=$!
target/debug/examples/cache_two_instances >"$dir/cache.log" 2>&1 &
cache=$!

sleep $((secs / 3))
echo "soak: kill -9 Redis at +$(( $(date +%s) - started )) s"
kill -9 "$redis_pid"
wait "$redis_pid" 2>/dev/null || true
sleep 2
start_redis
echo "soak: Redis back at +$(( $(date +%s) - started )) s"

rc=0
wait "$payments" || rc_p=$?
wait "$cache" || rc_c=$?
for name in payments cache; do
  echo "---- $name (last lines)"
  tail -n 6 "$dir/$name.log"
done
if [ "${rc_p:-0}" != 0 ] || [ "${rc_c:-0}" != 0 ]; then
  echo "soak failed: payments_server exited ${rc_p:-0}, cache_two_instances exited ${rc_c:-0}" >&2
  rc=1
fi
if grep -q "panicked" "$dir/payments.log" "$dir/cache.log"; then
  echo "soak failed: a panic" >&2
  rc=1
fi
[ "$rc" = 0 ] && echo "soak: both examples rode through the Redis kill -9 and restart, exit 0"
exit "$rc"
