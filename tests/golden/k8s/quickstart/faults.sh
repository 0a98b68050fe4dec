#!/bin/sh
# The failure timeline of configs/quickstart.toml, for a real cluster (rendered by `lbbench k8s render`).
# usage: faults.sh START_AT FRONTEND RATE_RPS [REPEAT] > events.csv
#   START_AT is the load's t=0 in unix seconds (the lbbench-clock ConfigMap's start_at).
# Prints events.csv rows (at_s measured from START_AT when each command was issued) for `lbbench merge --events`.
set -u
START_AT=$1 FRONTEND=$2 RATE=$3 REPEAT=${4:-0}
sleep_until() {
  python3 -c 'import sys, time; time.sleep(max(0.0, float(sys.argv[1]) + float(sys.argv[2]) - time.time()))' \
    "$START_AT" "$1"
}
event() {
  at=$(python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.6f}")' "$START_AT")
  printf '%s,event,%s,%s,%s,%s,%s\n' "$at" "$1" "$2" "$FRONTEND" "$RATE" "$REPEAT"
}
pod_at() {
  kubectl -n "$1" get pods -l "$2" --field-selector=status.phase=Running --sort-by=.metadata.name -o name |
    sed -n "$(($3 + 1))p"
}
skip() { echo "faults.sh: $1" >&2; }
node_at() {  # the N-th node (0-based, by name) that runs this experiment's pods: the config's node-N
  kubectl get pods -A -l lbbench.dev/experiment=quickstart,lbbench.dev/role=pod -o jsonpath='{.items[*].spec.nodeName}' | tr ' ' '\n' |
    sort -u | sed -n "$(($1 + 1))p"
}
CORDONED=""
uncordon_all() { for node in $CORDONED; do kubectl uncordon "$node" >&2; done; }
trap uncordon_all EXIT
echo 'at_s,kind,target,detail,frontend,rate_rps,repeat'

# 5 s: kill_pod deployment/web (forced delete (grace 0): the crash is a new pod, not a container restart)
sleep_until 5
POD=$(pod_at lbbench-quickstart app=web 0)
if [ -n "$POD" ]; then event deployment/web kill_pod; kubectl -n lbbench-quickstart delete "$POD" --grace-period=0 --force --wait=false >&2; else skip 'kill_pod deployment/web: no running pod #0'; fi
