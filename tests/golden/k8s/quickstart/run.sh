#!/bin/sh
# Run configs/quickstart.toml on the cluster of the current kubectl context (rendered by `lbbench k8s render`).
# usage: sh run.sh [PARTS_DIR]
#   env LBBENCH_LEAD_S: seconds between creating a Job and its t=0 (default 45)
#   env LBBENCH_READY_S: how long each workload may take to become ready (default 300)
set -eu
DIR=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-lbbench-parts}
LEAD_S=${LBBENCH_LEAD_S:-45}
READY_S=${LBBENCH_READY_S:-300}
REPEATS=1
RESULTS=results/k8s-quickstart
STEP="starting"
trap 'rc=$?; [ "$rc" -eq 0 ] || echo "run.sh: stopped (exit status $rc) while $STEP" >&2' EXIT
fail() { echo "run.sh: $*" >&2; exit 1; }
ready() {  # NAMESPACE KIND/NAME SELECTOR: wait for the rollout; if it does not come, say why and stop
  STEP="waiting for $2 in namespace $1"
  if ! kubectl -n "$1" rollout status "$2" --timeout="${READY_S}s"; then
    echo "run.sh: $2 in namespace $1 is not ready after $READY_S s; its pods:" >&2
    kubectl -n "$1" get pods -l "$3" -o wide >&2 || true
    echo "run.sh: the last log lines of $2 (kubectl logs):" >&2
    kubectl -n "$1" logs -l "$3" --all-containers --prefix --tail=20 >&2 || true
    kubectl -n "$1" logs -l "$3" --all-containers --prefix --tail=20 --previous >&2 2>/dev/null || true
    fail "$2 did not become ready: see its pods and log lines above (image pulled? arguments accepted? readiness probe answering?); nothing was measured"
  fi
}
wait_job() {  # NAMESPACE JOB PARTS TIMEOUT_S: until every part succeeded, or one failed (backoffLimit 0: the
  end=$(( $(date +%s) + $4 ))  # Job fails with it), or the time is up; a failed part's log lines are shown
  while :; do
    ok=$(kubectl -n "$1" get job "$2" -o jsonpath='{.status.succeeded}')
    failed=$(kubectl -n "$1" get job "$2" -o jsonpath='{.status.failed}')
    [ "${ok:-0}" -ge "$3" ] || [ "${failed:-0}" -gt 0 ] && break
    if [ "$(date +%s)" -ge "$end" ]; then
      echo "run.sh: job $2: ${ok:-0} of $3 part(s) done after $4 s" >&2
      return 1
    fi
    sleep 2
  done
  [ "${failed:-0}" -eq 0 ] && return 0
  echo "run.sh: job $2: $failed of $3 part(s) failed; their last log lines:" >&2
  for pod in $(kubectl -n "$1" get pods -l job-name="$2" --field-selector=status.phase=Failed -o name); do
    kubectl -n "$1" logs "$pod" --prefix --tail=20 >&2 || true
  done
  return 1
}
mkdir -p "$OUT"
STEP="applying the manifests"
kubectl apply -f "$DIR/00-namespaces.yaml"
kubectl apply -f "$DIR/10-workloads.yaml"
kubectl apply -f "$DIR/20-services.yaml"
kubectl apply -f "$DIR/30-ingress.yaml"
kubectl apply -f "$DIR/40-l7-proxy.yaml"
ready lbbench-quickstart deployment/web app=web
ready lbbench-quickstart deployment/lbbench-l7-proxy app=lbbench-l7-proxy

# -- kube-proxy @ 280 rps: 3 part(s) --
r=0
while [ "$r" -lt "$REPEATS" ]; do
  STEP="running job lbbench-load-kube-proxy-0 (repeat $r)"
  START=$(( $(date +%s) + LEAD_S ))
  kubectl -n lbbench-quickstart create configmap lbbench-clock --from-literal=start_at="$START" --from-literal=repeat="$r" \
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -f "$DIR/50-load-kube-proxy-0.yaml"
  sh "$DIR/faults.sh" "$START" kube-proxy 280 "$r" > "$OUT/events-kube-proxy-280rps-$r.csv" &
  FAULTS=$!
  wait_job lbbench-quickstart lbbench-load-kube-proxy-0 3 $(( LEAD_S + 140 )) \
    || echo "run.sh: job lbbench-load-kube-proxy-0 (repeat $r) is incomplete; collecting what is there (merge refuses a missing part)" >&2
  wait "$FAULTS" || true
  for pod in $(kubectl -n lbbench-quickstart get pods -l job-name=lbbench-load-kube-proxy-0 -o name); do
    kubectl -n lbbench-quickstart logs "$pod" --tail=-1 > "$OUT/kube-proxy-280rps-$r-${pod#pod/}.log" || echo "run.sh: no log of $pod" >&2
  done
  kubectl -n lbbench-quickstart delete job lbbench-load-kube-proxy-0 --wait=true
  r=$(( r + 1 ))
done

# -- l7-proxy @ 280 rps: 3 part(s) --
r=0
while [ "$r" -lt "$REPEATS" ]; do
  STEP="running job lbbench-load-l7-proxy-0 (repeat $r)"
  START=$(( $(date +%s) + LEAD_S ))
  kubectl -n lbbench-quickstart create configmap lbbench-clock --from-literal=start_at="$START" --from-literal=repeat="$r" \
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -f "$DIR/50-load-l7-proxy-0.yaml"
  sh "$DIR/faults.sh" "$START" l7-proxy 280 "$r" > "$OUT/events-l7-proxy-280rps-$r.csv" &
  FAULTS=$!
  wait_job lbbench-quickstart lbbench-load-l7-proxy-0 3 $(( LEAD_S + 140 )) \
    || echo "run.sh: job lbbench-load-l7-proxy-0 (repeat $r) is incomplete; collecting what is there (merge refuses a missing part)" >&2
  wait "$FAULTS" || true
  for pod in $(kubectl -n lbbench-quickstart get pods -l job-name=lbbench-load-l7-proxy-0 -o name); do
    kubectl -n lbbench-quickstart logs "$pod" --tail=-1 > "$OUT/l7-proxy-280rps-$r-${pod#pod/}.log" || echo "run.sh: no log of $pod" >&2
  done
  kubectl -n lbbench-quickstart delete job lbbench-load-l7-proxy-0 --wait=true
  r=$(( r + 1 ))
done

echo "collected into $OUT; now:"
echo "  lbbench merge $OUT/*.log --events $OUT/events-*.csv --config $DIR/config.toml --out $RESULTS"
echo "  lbbench report $RESULTS"
