#!/usr/bin/env bash
# Starts (or stops) a local ferrokv cluster on loopback, the way etcd's Procfile does:
# member i listens for clients on 127.0.0.1:(i*10000+2379) and for peers on (i*10000+2380).
# Members run in the background; their logs and data live under $RUN_DIR.
set -euo pipefail
cmd=${1:-start}
MEMBERS=${MEMBERS:-3}
RUN_DIR=${RUN_DIR:-.run}
BIN=${FERROKV_BIN:-target/release/ferrokv}
TOKEN=${TOKEN:-ferrokv-local}

client_port() { if [ "$1" -eq 1 ]; then echo 2379; else echo $(( $1 * 10000 + 2379 )); fi; }
peer_port() { if [ "$1" -eq 1 ]; then echo 2380; else echo $(( $1 * 10000 + 2380 )); fi; }

stop() {
  shopt -s nullglob
  for pidfile in "$RUN_DIR"/*.pid; do
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "$cmd" in
  stop)
    stop
    echo "stopped the local cluster in $RUN_DIR (data kept; rm -rf $RUN_DIR to start afresh)"
    ;;
  start)
    [ -x "$BIN" ] || { echo "run-cluster: $BIN not found; build it with: cargo build --release -p ferrokv" >&2; exit 1; }
    mkdir -p "$RUN_DIR"
    stop
    cluster=""
    for i in $(seq "$MEMBERS"); do
      cluster+="${cluster:+,}m$i=http://127.0.0.1:$(peer_port "$i")"
    done
    endpoints=""
    for i in $(seq "$MEMBERS"); do
      cp=$(client_port "$i"); pp=$(peer_port "$i")
      state=new
      [ -d "$RUN_DIR/m$i.etcd/member" ] && state=existing
      "$BIN" --name "m$i" --data-dir "$RUN_DIR/m$i.etcd" \
        --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
        --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
        --initial-cluster "$cluster" --initial-cluster-token "$TOKEN" --initial-cluster-state "$state" \
        >"$RUN_DIR/m$i.log" 2>&1 &
      echo $! > "$RUN_DIR/m$i.pid"
      endpoints+="${endpoints:+,}http://127.0.0.1:$cp"
    done
    # Wait until every member answers on its client port (or report the log of the one that died).
    for i in $(seq "$MEMBERS"); do
      cp=$(client_port "$i")
      ok=""
      for _ in $(seq 100); do
        if ! kill -0 "$(cat "$RUN_DIR/m$i.pid")" 2>/dev/null; then
          echo "member m$i exited; its log ($RUN_DIR/m$i.log):" >&2; tail -20 "$RUN_DIR/m$i.log" >&2; stop; exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$cp") 2>/dev/null; then ok=1; break; fi
        sleep 0.1
      done
      [ -n "$ok" ] || { echo "member m$i did not open 127.0.0.1:$cp in 10 s; see $RUN_DIR/m$i.log" >&2; stop; exit 1; }
    done
    echo "ferrokv cluster of $MEMBERS member(s) is running (logs and data in $RUN_DIR/)"
    echo "endpoints: $endpoints"
    echo "try:  ETCDCTL_API=3 etcdctl --endpoints $endpoints put hello world"
    echo "stop: make stop"
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
