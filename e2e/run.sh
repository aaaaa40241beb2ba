#!/usr/bin/env bash
# `make run`: the product working on this machine, offline. It starts (unless KUBECONFIG is
# set, or the local control plane is already up) the local control plane, installs the CRDs,
# starts the demo data source (demo/: GitHub-, GitLab- and Jira-shaped APIs on loopback whose
# data moves), applies the demo Workspace, Secrets and ToolBindings into `hyperpage-demo`,
# runs the operator with polling on and the demo Workspace's portal as a local process (the
# kwok pods of the local control plane serve nothing), and prints the portal's URL.
#
# With GITHUB_TOKEN set, the GitHub binding reads the real api.github.com instead
# (HYPERPAGE_DEMO_REPOS=owner/a,owner/b picks the repositories).
#
# Ctrl-C stops everything this script started, by pid: the portal, the operator, the demo
# server and the local control plane if it started it (a cluster that was up stays up).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NAMESPACE=${HYPERPAGE_DEMO_NAMESPACE:-hyperpage-demo}
WORKSPACE=demo
RUN=demo/.run # logs, the demo APIs' URLs, the portal's kubeconfig
say() { printf '[make run] %s\n' "$*" >&2; }

pids=() names=() # started here, stopped in reverse order
stop_cluster=false
# shellcheck disable=SC2317 # run by the EXIT trap
stop_all() {
    local status=$? i pid left
    trap - EXIT INT TERM
    set +e
    ((${#pids[@]})) && say "stopping ${names[*]} (pids ${pids[*]})"
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null; done
    for _ in $(seq 1 60); do # the portal drains for up to 10 s; the operator releases its Lease
        left=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
        ((${#left[@]})) || break
        sleep 0.25
    done
    if ((${#left[@]})); then
        say "killing ${left[*]} (still running 15 s after SIGTERM)"
        kill -KILL "${left[@]}" 2>/dev/null
    fi
    wait 2>/dev/null
    rm -f "$RUN/portal.kubeconfig" "$RUN/endpoints.env"
    if $stop_cluster; then
        say "stopping the local control plane this started"
        bash e2e/cluster.sh down
    fi
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a process in the background, logging to $RUN/logs/NAME.log.
start() {
    local name=$1; shift
    "$@" >"$RUN/logs/$name.log" 2>&1 </dev/null &
    pids+=($!) names+=("$name")
}

# Polls a command until it succeeds; fails after TIMEOUT seconds or when process NAME died.
wait_for() {
    local name=$1 timeout=$2 what=$3 i pid; shift 3
    for i in "${!names[@]}"; do [[ ${names[i]} == "$name" ]] && pid=${pids[i]}; done
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [[ -n ${pid:-} ]] && ! kill -0 "$pid" 2>/dev/null; then
            say "error: $name exited while waiting for $what; the end of $RUN/logs/$name.log:"
            tail -n 20 "$RUN/logs/$name.log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            say "error: no $what after ${timeout}s; see $RUN/logs/"
            exit 1
        fi
        sleep 0.5
    done
}

bash e2e/setup.sh run

if [[ -z ${KUBECONFIG:-} ]]; then
    # A cluster that is already up stays up; one started here stops with Ctrl-C.
    bash e2e/cluster.sh status >/dev/null 2>&1 || stop_cluster=true
    bash e2e/cluster.sh up
    # shellcheck source=/dev/null
    source e2e/.run/env
    local_cluster=true
else
    command -v kubectl >/dev/null || PATH="$(bash e2e/cluster.sh bin-dir):$PATH"
    local_cluster=false
fi

say "building hyperpage and the demo data source (cargo build --release)"
cargo build --release --locked -p hyperpage -p hyperpage-demo
bin=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release

mkdir -p "$RUN/logs"
rm -f "$RUN/endpoints.env"
start demo-server "$bin/hyperpage-demo" serve --endpoints-file "$RUN/endpoints.env" --step "${HYPERPAGE_DEMO_STEP:-15s}"
wait_for demo-server 30 "demo APIs" test -s "$RUN/endpoints.env"
# shellcheck source=/dev/null
source "$RUN/endpoints.env"

kubectl apply --server-side --field-manager=hyperpage-run -f crds/ >/dev/null
kubectl wait --for condition=Established --timeout=60s crd/workspaces.hyperpage.dev crd/toolbindings.hyperpage.dev >/dev/null
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# A previous run's bindings hold that run's data (and the old demo ports): start afresh.
kubectl delete toolbindings -n "$NAMESPACE" -l app.kubernetes.io/part-of=hyperpage-demo --ignore-not-found --wait >/dev/null
"$bin/hyperpage-demo" manifests --github-url "$DEMO_GITHUB_URL" --gitlab-url "$DEMO_GITLAB_URL" --jira-url "$DEMO_JIRA_URL" \
    | kubectl apply -n "$NAMESPACE" -f -

read -r admin_port portal_port metrics_port <<<"$(bash e2e/cluster.sh free-ports 3)"
portal_port=${HYPERPAGE_DEMO_PORT:-$portal_port}
# The demo APIs are plain http on loopback, which the endpoint policy refuses unless allowed;
# the demo Workspace's portal is public, which the admin policy refuses unless allowed.
start operator env RUST_LOG="${RUST_LOG:-info}" "$bin/hyperpage" operator \
    --admin-address "127.0.0.1:$admin_port" --lease-namespace "$NAMESPACE" --watch-namespaces "$NAMESPACE" \
    --allow-private-cidrs 127.0.0.0/8 --allow-insecure-http=true --allow-public-portals=true
wait_for operator 60 "ready operator" curl -fsS --max-time 2 "http://127.0.0.1:$admin_port/readyz"
# The portal's Role and ServiceAccount come from the operator, as in a cluster.
wait_for operator 60 "portal Deployment" kubectl get deployment "$WORKSPACE-portal" -n "$NAMESPACE"

# The portal runs here as its own ServiceAccount (read-only on this namespace's Workspaces and
# ToolBindings), with the access mode the operator gave its Deployment.
access_mode=$(kubectl get deployment "$WORKSPACE-portal" -n "$NAMESPACE" \
    -o jsonpath='{.spec.template.spec.containers[?(@.name=="portal")].env[?(@.name=="HYPERPAGE_ACCESS_MODE")].value}')
token=$(kubectl create token "$WORKSPACE-portal" -n "$NAMESPACE" --duration=24h)
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
(
    umask 077
    cat >"$RUN/portal.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: $server
${ca:+    certificate-authority-data: $ca}
users:
- name: $WORKSPACE-portal
  user:
    token: $token
contexts:
- name: portal
  context: {cluster: cluster, user: $WORKSPACE-portal, namespace: $NAMESPACE}
current-context: portal
EOF
)
unset token
start portal env KUBECONFIG="$RUN/portal.kubeconfig" RUST_LOG="${RUST_LOG:-info}" "$bin/hyperpage" portal \
    --namespace "$NAMESPACE" --workspace "$WORKSPACE" --access-mode "${access_mode:-kubernetes}" \
    --listen "127.0.0.1:$portal_port" --metrics-listen "127.0.0.1:$metrics_port"
wait_for portal 60 "ready portal" curl -fsS --max-time 2 "http://127.0.0.1:$portal_port/readyz"

github=$(kubectl get toolbinding github -n "$NAMESPACE" -o jsonpath='{.spec.endpoint}')
if [[ $github == "$DEMO_GITHUB_URL" ]]; then
    github="GitHub: the demo API $DEMO_GITHUB_URL"
else
    repos=$(kubectl get toolbinding github -n "$NAMESPACE" -o jsonpath='{.spec.github.repositories[*]}')
    github="GitHub: the real $github (${repos// /, }) with your GITHUB_TOKEN, every minute"
fi
env_hint=""
$local_cluster && env_hint="      source $PWD/e2e/.run/env"$'\n'
cat <<INFO

  Hyperpage is running. Open the portal:

      Portal: http://127.0.0.1:$portal_port/

  Tool data comes from the demo data source (demo/, hyperpage-demo; not part of hyperpage),
  which changes every ${HYPERPAGE_DEMO_STEP:-15s}: pipelines turn red and green, pull requests and tickets come and go.
    $github
    GitLab: the demo API $DEMO_GITLAB_URL    Jira: the demo API $DEMO_JIRA_URL
  The operator polls every 30 s (the Workspace's refreshInterval); the page follows live.

  Access: this demo runs the operator with --allow-public-portals and the Workspace with
  spec.portal.access.mode: public, so anyone who can reach 127.0.0.1:$portal_port sees the page
  (portal access mode: ${access_mode:-kubernetes}). Production installs keep public portals off
  (the chart's default): there a portal asks for sign-in or a Kubernetes token.

  Look around (in another terminal):
${env_hint}      kubectl get workspaces,toolbindings -n $NAMESPACE
      curl -s 127.0.0.1:$admin_port/metrics | grep ^hyperpage_
  Logs: $RUN/logs/ (operator.log, portal.log, demo-server.log)

  Ctrl-C stops the portal, the operator and the demo server$($stop_cluster && printf ', and the local control plane this started').
INFO

# Report the first data once the Workspace has it (the first poll starts at once).
# shellcheck disable=SC2317 # run by wait_for
has_data() { [[ -n $(kubectl get workspace "$WORKSPACE" -n "$NAMESPACE" -o jsonpath='{.status.summary.lastSyncTime}') ]]; }
wait_for operator 90 "tool data in the Workspace's status" has_data
say "first data: $(kubectl get workspace "$WORKSPACE" -n "$NAMESPACE" \
    -o jsonpath='open PRs/MRs {.status.summary.openPullRequests}, failing pipelines {.status.summary.failingPipelines}, open issues {.status.summary.openIssues}')"

# Runs until Ctrl-C (the INT trap) or until one of the processes ends by itself.
set +e
wait -n "${pids[@]}"
for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
        say "error: ${names[i]} exited; the end of $RUN/logs/${names[i]}.log:"
        tail -n 20 "$RUN/logs/${names[i]}.log" >&2
    fi
done
exit 1
