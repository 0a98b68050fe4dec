"""The two shell scripts `lbbench k8s render` writes next to the manifests.

faults.sh  the failure timeline: `kubectl delete pod` (and scale, rolling update, cordon + drain for a
           node going down) at the config's offsets from the load's t=0; prints events.csv rows
           (the results folder's format)
run.sh     every phase end to end: apply, wait for rollout, set the clock, run the load Job and the
           timeline, collect each part's `kubectl logs`, then print the `lbbench merge` command
"""

from __future__ import annotations

import json
import random
import shlex
from dataclasses import dataclass

from lbbench.config.parse import parse_template
from lbbench.config.reader import Table
from lbbench.config.schema import Config, Event, PodTemplate, Workload
from lbbench.k8s.manifests import (
    CLOCK_CONFIGMAP,
    EXPERIMENT,
    PROXY_NAME,
    ROLE,
    Context,
    LoadPhase,
    pod_args,
    readiness_probe,
)

EVENTS_HEADER = "at_s,kind,target,detail,frontend,rate_rps,repeat"
JOB_SLACK_S = 120

_FAULTS_PRELUDE = """\
#!/bin/sh
# The failure timeline of {config}, for a real cluster (rendered by `lbbench k8s render`).
# usage: faults.sh START_AT FRONTEND RATE_RPS [REPEAT] > events.csv
#   START_AT is the load's t=0 in unix seconds (the lbbench-clock ConfigMap's start_at).
# Prints events.csv rows (at_s measured from START_AT when each command was issued) for `lbbench merge --events`.
set -u
START_AT=$1 FRONTEND=$2 RATE=$3 REPEAT=${{4:-0}}
sleep_until() {{
  python3 -c 'import sys, time; time.sleep(max(0.0, float(sys.argv[1]) + float(sys.argv[2]) - time.time()))' \\
    "$START_AT" "$1"
}}
event() {{
  at=$(python3 -c 'import sys, time; print(f"{{time.time() - float(sys.argv[1]):.6f}}")' "$START_AT")
  printf '%s,event,%s,%s,%s,%s,%s\\n' "$at" "$1" "$2" "$FRONTEND" "$RATE" "$REPEAT"
}}
pod_at() {{
  kubectl -n "$1" get pods -l "$2" --field-selector=status.phase=Running --sort-by=.metadata.name -o name |
    sed -n "$(($3 + 1))p"
}}
skip() {{ echo "faults.sh: $1" >&2; }}
node_at() {{  # the N-th node (0-based, by name) that runs this experiment's pods: the config's node-N
  kubectl get pods -A -l {pods} -o jsonpath='{{.items[*].spec.nodeName}}' | tr ' ' '\\n' |
    sort -u | sed -n "$(($1 + 1))p"
}}
CORDONED=""
uncordon_all() {{ for node in $CORDONED; do kubectl uncordon "$node" >&2; done; }}
trap uncordon_all EXIT
echo '{header}'
"""


@dataclass(frozen=True)
class FaultStep:
    at_s: float
    action: str
    target: str
    lines: tuple[str, ...]  # shell lines that fire it; empty: not possible on a real cluster
    note: str = ""


def _workload(config: Config, target: str) -> Workload | None:
    kind, _, name = target.partition("/")
    if kind == "pod":  # a StatefulSet's pod-k, or a pod named after its workload
        return next((w for w in config.workloads if name.startswith(f"{w.name}-")), None)
    return next((w for w in config.workloads if w.key == target), None)


def _selector(w: Workload) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(w.labels.items()))


def _pod_lines(ctx: Context, ev: Event, i: int, delete_flags: str) -> tuple[str, ...]:
    q = shlex.quote
    kind, _, name = ev.target.partition("/")
    w = _workload(ctx.config, ev.target)
    ns = ctx.ns(w.namespace if w is not None else ctx.config.service(ctx.config.load.service).namespace)
    if kind == "pod":
        pod = f"pod/{name}"
        return (f"event {q(ev.target)} {ev.action}", f"kubectl -n {ns} delete {q(pod)} {delete_flags} >&2")
    assert w is not None
    index = ev.index if ev.index is not None else random.Random(ctx.config.run.seed * 1_000_003 + i).randrange(
        max(1, w.replicas))
    return (f"POD=$(pod_at {ns} {q(_selector(w))} {index})",
            f'if [ -n "$POD" ]; then event {q(ev.target)} {ev.action}; '
            f'kubectl -n {ns} delete "$POD" {delete_flags} >&2; '
            f"else skip {q(f'{ev.action} {ev.target}: no running pod #{index}')}; fi")


def _rolling_lines(ctx: Context, ev: Event, i: int, template: PodTemplate) -> tuple[str, ...]:
    w = _workload(ctx.config, ev.target)
    assert w is not None
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/args",
              "value": pod_args(template, ctx.config.run.seed)},
             {"op": "replace", "path": "/spec/template/spec/containers/0/readinessProbe",
              "value": readiness_probe(template.readiness)}]
    kind = w.kind.lower()
    return (f"event {shlex.quote(ev.target)} {ev.action}",
            f"kubectl -n {ctx.ns(w.namespace)} patch {kind} {w.name} --type=json "
            f"-p {shlex.quote(json.dumps(patch, separators=(',', ':')))} >&2")


_CONTROL_PIPE = ("pods take slow/fail/unready/recover faults over their control pipe (stdin), which a pod on a "
                 "cluster does not have (its containers run with --no-control); changing the fault would mean "
                 "a new pod, which is a rolling update, not the same pod turning slow")
UNSUPPORTED = {"slow_pod": _CONTROL_PIPE, "fail_pod": _CONTROL_PIPE, "unready_pod": _CONTROL_PIPE,
               "recover_pod": _CONTROL_PIPE}
NODE_DOWN_NOTE = ("cordon + drain of the node running this experiment's pods (only those are evicted; it is "
                  "uncordoned when the phase ends): a planned maintenance, not a crash. A crash (pods gone at "
                  "once, their Endpoints kept until the node controller's grace period) would mean stopping a "
                  "kubelet or powering a machine off, which a benchmark must not do to your cluster; DaemonSet "
                  "pods are not evicted by a drain")


CLUSTER_FAULTS = "\n".join([
    "- kill_pod: `kubectl delete pod --grace-period=0 --force`; the closest to a crash from outside (a SIGKILL "
    "from inside the pod's namespace is ignored by PID 1); the pod is replaced by a new one, not restarted",
    "- delete_pod: `kubectl delete pod` (graceful: the pod leaves Endpoints, then gets SIGTERM)",
    "- scale: `kubectl scale --replicas`",
    "- rolling_update: `kubectl patch` of the template's args and readiness probe; the rollout itself is the "
    "cluster's (maxSurge 1, maxUnavailable 0, as lbbench's controller)",
    f"- node_down: {NODE_DOWN_NOTE}",
    f"- slow_pod, fail_pod, unready_pod, recover_pod: not possible: {_CONTROL_PIPE}",
])


def fault_steps(ctx: Context) -> list[FaultStep]:
    """The config's [[events]] as kubectl commands (in order), or why one cannot be done."""
    templates = {w.key: w.template for w in ctx.config.workloads}
    steps = []
    for i, ev in enumerate(sorted(ctx.config.events, key=lambda e: e.at_s)):
        if ev.action == "kill_pod":
            # SIGKILL from outside is not possible (PID 1 ignores it from inside its namespace):
            # a forced delete is the closest crash; the pod is then replaced, not restarted
            lines = _pod_lines(ctx, ev, i, "--grace-period=0 --force --wait=false")
            steps.append(FaultStep(ev.at_s, ev.action, ev.target, lines,
                                   "forced delete (grace 0): the crash is a new pod, not a container restart"))
        elif ev.action == "delete_pod":
            steps.append(FaultStep(ev.at_s, ev.action, ev.target, _pod_lines(ctx, ev, i, "--wait=false")))
        elif ev.action == "scale":
            w = _workload(ctx.config, ev.target)
            assert w is not None
            lines = (f"event {shlex.quote(ev.target)} {ev.action}",
                     f"kubectl -n {ctx.ns(w.namespace)} scale {ev.target} --replicas={ev.replicas} >&2")
            steps.append(FaultStep(ev.at_s, ev.action, ev.target, lines))
        elif ev.action == "rolling_update":
            table = Table(ctx.config.path, f"events[{i}].template", dict(ev.template))
            templates[ev.target] = parse_template(table, base=templates[ev.target])
            steps.append(FaultStep(ev.at_s, ev.action, ev.target, _rolling_lines(ctx, ev, i, templates[ev.target])))
        elif ev.action == "node_down":
            steps.append(FaultStep(ev.at_s, ev.action, ev.target, _node_lines(ctx, ev), NODE_DOWN_NOTE))
        else:
            steps.append(FaultStep(ev.at_s, ev.action, ev.target, (), UNSUPPORTED.get(ev.action, "not supported")))
    return steps


def _experiment_pods(ctx: Context) -> str:
    labels = ctx.labels("pod")
    return f"{EXPERIMENT}={labels[EXPERIMENT]},{ROLE}={labels[ROLE]}"


def _node_lines(ctx: Context, ev: Event) -> tuple[str, ...]:
    """node/node-N down: the N-th node of the experiment's pods, cordoned, its experiment pods evicted.

    The drain runs in the background (it waits for evictions) so that later events keep their times.
    """
    q = shlex.quote
    index = int(ev.target.rsplit("-", 1)[1])
    return (f"NODE=$(node_at {index})",
            f'if [ -n "$NODE" ]; then event {q(ev.target)} {ev.action}; CORDONED="$CORDONED $NODE"; '
            f'kubectl cordon "$NODE" >&2; kubectl drain "$NODE" --pod-selector={q(_experiment_pods(ctx))} '
            f"--ignore-daemonsets --delete-emptydir-data --timeout=120s >&2 & "
            f"else skip {q(f'{ev.action} {ev.target}: the experiment runs on fewer than {index + 1} node(s)')}; fi")


def faults_script(ctx: Context) -> str:
    out = [_FAULTS_PRELUDE.format(config=ctx.config.path, header=EVENTS_HEADER, pods=_experiment_pods(ctx))]
    steps = fault_steps(ctx)
    for s in steps:
        out.append(f"\n# {s.at_s:g} s: {s.action} {s.target}" + (f" ({s.note})" if s.note else "") + "\n")
        out.append(f"sleep_until {s.at_s:.9g}\n")
        if s.lines:
            out += [line + "\n" for line in s.lines]
        else:
            out.append(f"skip {shlex.quote(f'{s.action} {s.target} at {s.at_s:g} s skipped: {s.note}')}\n")
    if any(s.action == "node_down" and s.lines for s in steps):
        # a node stays down for the rest of the phase, as in `lbbench run`; the EXIT trap uncordons it
        out.append(f"\n# the phase ends: wait for the drains, then uncordon\nsleep_until "
                   f"{ctx.config.run.duration_s:.9g}\nwait\n")
    return "".join(out)


def _rollouts(ctx: Context, with_proxy: bool) -> list[str]:
    """One `ready` line per workload: namespace, kind/name and the pods' label selector."""
    q = shlex.quote
    lines = [f"ready {ctx.ns(w.namespace)} {w.kind.lower()}/{w.name} {q(_selector(w))}"
             for w in ctx.config.workloads]
    if with_proxy:
        svc = ctx.config.service(ctx.config.load.service)
        lines.append(f"ready {ctx.ns(svc.namespace)} deployment/{PROXY_NAME} app={PROXY_NAME}")
    return lines


def _phase_block(ctx: Context, phase: LoadPhase, job_file: str) -> str:
    ns, job, q = phase.namespace, phase.job, shlex.quote
    wait_s = round(ctx.config.run.duration_s + ctx.config.load.timeout_s) + JOB_SLACK_S
    tag = f"{phase.frontend}-{phase.rate_rps:g}rps"
    return f"""
# -- {phase.frontend} @ {phase.rate_rps:g} rps: {phase.parallelism} part(s) --
r=0
while [ "$r" -lt "$REPEATS" ]; do
  STEP="running job {job} (repeat $r)"
  START=$(( $(date +%s) + LEAD_S ))
  kubectl -n {ns} create configmap {CLOCK_CONFIGMAP} --from-literal=start_at="$START" --from-literal=repeat="$r" \\
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -f "$DIR/{job_file}"
  sh "$DIR/faults.sh" "$START" {q(phase.frontend)} {phase.rate_rps:.9g} "$r" > "$OUT/events-{tag}-$r.csv" &
  FAULTS=$!
  wait_job {ns} {job} {phase.parallelism} $(( LEAD_S + {wait_s} )) \\
    || echo "run.sh: job {job} (repeat $r) is incomplete; collecting what is there (merge refuses a missing part)" >&2
  wait "$FAULTS" || true
  for pod in $(kubectl -n {ns} get pods -l job-name={job} -o name); do
    kubectl -n {ns} logs "$pod" --tail=-1 > "$OUT/{tag}-$r-${{pod#pod/}}.log" || echo "run.sh: no log of $pod" >&2
  done
  kubectl -n {ns} delete job {job} --wait=true
  r=$(( r + 1 ))
done
"""


def run_script(ctx: Context, phases: list[tuple[LoadPhase, str]], files: list[str], with_proxy: bool) -> str:
    applies = "\n".join(f'kubectl apply -f "$DIR/{f}"' for f in files)
    rollouts = "\n".join(_rollouts(ctx, with_proxy))
    blocks = "".join(_phase_block(ctx, p, f) for p, f in phases)
    return f"""#!/bin/sh
# Run {ctx.config.path} on the cluster of the current kubectl context (rendered by `lbbench k8s render`).
# usage: sh run.sh [PARTS_DIR]
#   env LBBENCH_LEAD_S: seconds between creating a Job and its t=0 (default 45)
#   env LBBENCH_READY_S: how long each workload may take to become ready (default 300)
set -eu
DIR=$(cd "$(dirname "$0")" && pwd)
OUT=${{1:-lbbench-parts}}
LEAD_S=${{LBBENCH_LEAD_S:-45}}
READY_S=${{LBBENCH_READY_S:-300}}
REPEATS={ctx.config.run.repeat}
RESULTS=results/k8s-{ctx.config.name}
STEP="starting"
trap 'rc=$?; [ "$rc" -eq 0 ] || echo "run.sh: stopped (exit status $rc) while $STEP" >&2' EXIT
fail() {{ echo "run.sh: $*" >&2; exit 1; }}
ready() {{  # NAMESPACE KIND/NAME SELECTOR: wait for the rollout; if it does not come, say why and stop
  STEP="waiting for $2 in namespace $1"
  if ! kubectl -n "$1" rollout status "$2" --timeout="${{READY_S}}s"; then
    echo "run.sh: $2 in namespace $1 is not ready after $READY_S s; its pods:" >&2
    kubectl -n "$1" get pods -l "$3" -o wide >&2 || true
    echo "run.sh: the last log lines of $2 (kubectl logs):" >&2
    kubectl -n "$1" logs -l "$3" --all-containers --prefix --tail=20 >&2 || true
    kubectl -n "$1" logs -l "$3" --all-containers --prefix --tail=20 --previous >&2 2>/dev/null || true
    fail "$2 did not become ready: see its pods and log lines above (image pulled? arguments accepted? \
readiness probe answering?); nothing was measured"
  fi
}}
wait_job() {{  # NAMESPACE JOB PARTS TIMEOUT_S: until every part succeeded, or one failed (backoffLimit 0: the
  end=$(( $(date +%s) + $4 ))  # Job fails with it), or the time is up; a failed part's log lines are shown
  while :; do
    ok=$(kubectl -n "$1" get job "$2" -o jsonpath='{{.status.succeeded}}')
    failed=$(kubectl -n "$1" get job "$2" -o jsonpath='{{.status.failed}}')
    [ "${{ok:-0}}" -ge "$3" ] || [ "${{failed:-0}}" -gt 0 ] && break
    if [ "$(date +%s)" -ge "$end" ]; then
      echo "run.sh: job $2: ${{ok:-0}} of $3 part(s) done after $4 s" >&2
      return 1
    fi
    sleep 2
  done
  [ "${{failed:-0}}" -eq 0 ] && return 0
  echo "run.sh: job $2: $failed of $3 part(s) failed; their last log lines:" >&2
  for pod in $(kubectl -n "$1" get pods -l job-name="$2" --field-selector=status.phase=Failed -o name); do
    kubectl -n "$1" logs "$pod" --prefix --tail=20 >&2 || true
  done
  return 1
}}
mkdir -p "$OUT"
STEP="applying the manifests"
{applies}
{rollouts}
{blocks}
echo "collected into $OUT; now:"
echo "  lbbench merge $OUT/*.log --events $OUT/events-*.csv --config $DIR/config.toml --out $RESULTS"
echo "  lbbench report $RESULTS"
"""
