#!/usr/bin/env bash
# Local Kubernetes control plane for the e2e tests (envtest + kwok style).
#
# The real kube-apiserver, etcd, kube-controller-manager and kube-scheduler are built
# from pinned Go modules (no internet, no Docker here), started on loopback with
# generated certs, and kwok fakes two nodes so Deployments really roll out.
#
#   e2e/cluster.sh build     build (or reuse) the pinned binaries; prints nothing on stdout
#   e2e/cluster.sh up        start the cluster (or reuse $KUBECONFIG / a running one)
#   e2e/cluster.sh down      stop what `up` started and remove e2e/.run/
#   e2e/cluster.sh env       print the env file (eval "$(e2e/cluster.sh env)")
#   e2e/cluster.sh bin-dir   print the directory holding the binaries (builds if needed)
#   e2e/cluster.sh free-ports N  print N free TCP ports on 127.0.0.1
#   e2e/cluster.sh tool NAME [BINARY]  print the path of the test-only program in e2e/tools/NAME
#                            (builds if needed; BINARY: one of several commands it builds)
#   e2e/cluster.sh status    say whether the local cluster is running
#   e2e/cluster.sh stop-component NAME     stop one running component (its command line is kept)
#   e2e/cluster.sh start-component NAME    start it again with the same command line, wait until it answers
#   e2e/cluster.sh restart-component NAME [SECONDS]  both, with an outage of SECONDS between them
#   e2e/cluster.sh nodes     (re)create the kwok nodes that are missing and wait until they are Ready
#
# Pinned versions live in e2e/tools/*/go.mod (one wrapper module per upstream project).
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS_DIR=$E2E_DIR/tools
RUN_DIR=$E2E_DIR/.run
PKI=$RUN_DIR/pki
PIDS=$RUN_DIR/pids
LOGS=$RUN_DIR/logs
ENV_FILE=$RUN_DIR/env
ADMIN_KUBECONFIG=$RUN_DIR/kubeconfig
AUDIT_LOG=$RUN_DIR/audit.log
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/hyperpage/e2e-bin

# Bump when the build recipe (flags, ldflags) changes, so old caches are not reused.
RECIPE=1
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1 # first IP of SERVICE_CIDR: the `kubernetes` Service (data only)
POD_CIDR=10.244.0.0/16
# Opt-in knobs for large runs (make bench): more kwok nodes and pods per node, a higher
# client QPS for the controller manager and scheduler (their default of 20 makes thousands
# of Deployments take minutes to report available), and another audit policy.
KWOK_NODES=${HYPERPAGE_KWOK_NODES:-2}
KWOK_NODE_PODS=${HYPERPAGE_KWOK_NODE_PODS:-110}
NODES=()
for ((i = 0; i < KWOK_NODES; i++)); do NODES+=("kwok-node-$i"); done
CONTROL_PLANE_QPS=()
if [[ -n ${HYPERPAGE_KUBE_API_QPS:-} ]]; then
    CONTROL_PLANE_QPS=(--kube-api-qps="$HYPERPAGE_KUBE_API_QPS" --kube-api-burst="$((2 * HYPERPAGE_KUBE_API_QPS))")
fi
AUDIT_POLICY=${HYPERPAGE_AUDIT_POLICY:-$E2E_DIR/audit-policy.yaml}
# Start order; `down` stops in reverse. The OpenID provider starts before the API server,
# which reads its discovery document and keys. The registry (image and chart, for the chart
# test's install from OCI) needs nothing else.
COMPONENTS=(etcd oidc-provider registry kube-apiserver kube-controller-manager kube-scheduler kwok)
# The portals' OpenID client, and the users and groups of the provider (e2e/oidc-users.json).
OIDC_CLIENT_ID=hyperpage-portal

# The toolchain on this machine must be used as is (no toolchain downloads), and
# static binaries avoid any dependency on the host's libc.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

log() { printf '[cluster.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# kwok's own stage definitions (node initialize + lease heartbeat, pod ready/complete/delete:
# its "fast" set), read from the pinned kwok module rather than copied into this repository.
kwok_stages() {
    local dir stage
    dir=$(cd "$TOOLS_DIR/kwok" && go mod download -json sigs.k8s.io/kwok | awk -F'"' '$2 == "Dir" { print $4 }')
    [[ -d "$dir/kustomize/stage" ]] || die "kwok module source not found (go mod download sigs.k8s.io/kwok)"
    local stages=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)
    local paths=()
    for stage in "${stages[@]}"; do
        [[ -f "$dir/kustomize/stage/$stage" ]] || die "kwok stage $stage missing in $dir"
        paths+=("$dir/kustomize/stage/$stage")
    done
    (IFS=,; echo "${paths[*]}")
}

# --- versions and cache key ----------------------------------------------------------

# Version of a module required by a wrapper go.mod (single-line or block `require`).
pinned() {
    awk -v m="$2" '$1 == "require" && $2 == m { print $3; exit }
                   $1 == m && $2 ~ /^v/ { print $2; exit }' "$TOOLS_DIR/$1/go.mod"
}

K8S_VERSION=$(pinned kubernetes k8s.io/kubernetes)
ETCD_VERSION=$(pinned etcd go.etcd.io/etcd/server/v3)
KWOK_VERSION=$(pinned kwok sigs.k8s.io/kwok)
HELM_VERSION=$(pinned helm helm.sh/helm/v3)

# The control plane's wrapper modules. Any other directory in $TOOLS_DIR is a test-only
# program (a linter, an OpenID provider, ...) built on demand under a key of its own by
# `tool`, so adding or bumping one never rebuilds the control plane.
CONTROL_PLANE_TOOLS=(etcd helm kubernetes kwok)

cache_key() {
    local gov hash t mods=() sums=()
    gov=$(go env GOVERSION)
    # Any change to a wrapper module (versions, replaces, sums) or this recipe is a new key.
    for t in "${CONTROL_PLANE_TOOLS[@]}"; do mods+=("$TOOLS_DIR/$t/go.mod"); sums+=("$TOOLS_DIR/$t/go.sum"); done
    hash=$( { echo "recipe=$RECIPE $(go env GOOS)/$(go env GOARCH)"
              cat "${mods[@]}" "${sums[@]}"; } | sha256sum | cut -c1-12)
    echo "k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_${gov}_${hash}"
}

bin_dir() { echo "$CACHE_ROOT/$(cache_key)"; }

# --- build ---------------------------------------------------------------------------

# `go list -m` gives the module's publication time; used as a reproducible build date.
module_time() {
    (cd "$TOOLS_DIR/$1" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$2")
}

# go build in a wrapper module into $target (a directory ending in / or a file); each
# group gets its own stamp so a failed later group does not force relinking the others.
build_group() {
    local name=$1 target=$2 ldflags=$3; shift 3
    local start=$SECONDS stamp
    if [[ $target == */ ]]; then stamp=$target.done-$name; else stamp=$(dirname "$target")/.done-$name; fi
    if [[ -e $stamp ]]; then return 0; fi
    log "building $name ($*) ..."
    (cd "$TOOLS_DIR/$name" && go build -trimpath -ldflags "-s -w $ldflags" -o "$target" "$@") \
        || die "building $name failed"
    touch "$stamp"
    log "built $name in $((SECONDS - start))s"
}

build() {
    local out; out=$(bin_dir)
    [[ -e $out/.complete ]] && return 0
    command -v go >/dev/null || die "go is not on PATH"
    mkdir -p "$out"
    # Serialise concurrent builds (e.g. parallel test runs) on the same key.
    exec 9>"$out/.lock"
    flock 9
    if [[ -e $out/.complete ]]; then exec 9>&-; return 0; fi
    local start=$SECONDS
    log "building control plane binaries into $out (a cold Go cache takes ~15 min on 2 cores)"

    local kdate kminor kmajor ld="" p
    kdate=$(module_time kubernetes k8s.io/kubernetes)
    kmajor=${K8S_VERSION#v}; kmajor=${kmajor%%.*}
    kminor=${K8S_VERSION#v"$kmajor".}; kminor=${kminor%%.*}
    # Both version packages are stamped, as hack/lib/version.sh does, so servers and
    # clients report the real version instead of v0.0.0-master.
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$kmajor -X $p.gitMinor=$kminor"
        ld+=" -X $p.gitCommit=unknown -X $p.gitTreeState=clean -X $p.buildDate=$kdate"
    done
    # One `go build` for all four so the shared packages compile once.
    build_group kubernetes "$out/" "$ld" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl

    # Explicit file name: `go build` would call it "server" (the path before /v3).
    build_group etcd "$out/etcd" "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
        go.etcd.io/etcd/server/v3

    build_group kwok "$out/" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION" \
        sigs.k8s.io/kwok/cmd/kwok

    # Helm derives the Kubernetes version it lints/renders for from its client-go.
    local cg hmaj hmin
    cg=$(cd "$TOOLS_DIR/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)
    cg=${cg#v}; hmaj=$(( ${cg%%.*} + 1 )); hmin=${cg#*.}; hmin=${hmin%%.*}
    ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata="
    ld+=" -X helm.sh/helm/v3/internal/version.gitCommit=unknown -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ld+=" -X $p.k8sVersionMajor=$hmaj -X $p.k8sVersionMinor=$hmin"
    done
    build_group helm "$out/" "$ld" helm.sh/helm/v3/cmd/helm

    local b
    for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm; do
        [[ -x $out/$b ]] || die "missing $out/$b after build"
    done
    # Written last: only a fully built directory is ever reused.
    date -u +%Y-%m-%dT%H:%M:%SZ >"$out/.complete"
    exec 9>&-
    log "build complete in $((SECONDS - start))s: $out"
}

# A test-only program in $TOOLS_DIR/NAME: the package its tools.go imports (a pinned
# upstream tool), or else the module's own main package (a program of ours, such as the
# OpenID provider). Built once per module content and Go version; prints the binary's path.
# A tools.go may import several commands of one module (prometheus: prometheus and
# promtool), built in one `go build`; `tool NAME BINARY` names the one to print. Extra
# `go build` flags (e.g. -tags) may sit in NAME/build-flags, one per line.
tool() {
    local name=$1 bin=${2:-$1} dir=$TOOLS_DIR/$1 pkgs=(.) key out flags=()
    [[ -f $dir/go.mod ]] || die "no Go module $dir"
    if [[ -f $dir/tools.go ]]; then
        mapfile -t pkgs < <(awk '($1 == "import" && $2 == "_") { gsub(/"/, "", $3); print $3 }
                                 ($1 == "_" && $2 ~ /^"/) { gsub(/"/, "", $2); print $2 }' "$dir/tools.go")
        ((${#pkgs[@]})) || die "$dir/tools.go imports no package"
    fi
    [[ -f $dir/build-flags ]] && mapfile -t flags <"$dir/build-flags"
    key=$( { go env GOVERSION GOOS GOARCH; cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go; cat "$dir"/build-flags 2>/dev/null || true; } | sha256sum | cut -c1-12)
    out=$CACHE_ROOT/tools/$name-$key
    if [[ ! -e $out/.complete ]]; then
        mkdir -p "$out"
        exec 7>"$out/.lock"
        flock 7
        if [[ ! -e $out/.complete ]]; then
            local start=$SECONDS target=$out/$name
            # Several packages: each binary is named after its package's last element.
            ((${#pkgs[@]} > 1)) && target=$out/
            log "building $name (${pkgs[*]}) ..."
            (cd "$dir" && go build -trimpath -ldflags "-s -w" "${flags[@]}" -o "$target" "${pkgs[@]}") || die "building $name failed"
            touch "$out/.complete"
            log "built $name in $((SECONDS - start))s"
        fi
        exec 7>&-
    fi
    [[ -x $out/$bin ]] || die "$name built no binary $bin"
    echo "$out/$bin"
}

# --- helpers ---------------------------------------------------------------------------

# N free TCP ports on 127.0.0.1 (all held open at once so they are distinct).
free_ports() {
    python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}

pid_of() { [[ -s $PIDS/$1 ]] && cat "$PIDS/$1"; }

# True if the recorded process is alive and still runs our binary (guards against PID reuse).
alive() {
    local pid; pid=$(pid_of "$1") || return 1
    local cmd; cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmd == *"/$1 "* ]]
}

# Start a component detached from this shell (own session, no stdin), logging to a file.
start() {
    local name=$1; shift
    log "starting $name"
    # Close the lock fds: a daemon inheriting them would hold the locks forever.
    setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 8>&- 9>&- &
    local pid=$! i
    echo "$pid" >"$PIDS/$name"
    # Until the forked shell has exec'd the component, its cmdline is this script's and
    # alive() would call it dead (a loaded machine once failed "registry exited" this way).
    for ((i = 0; i < 200; i++)); do
        [[ $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") == *"/$name "* ]] && return 0
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
}

fail_with_log() {
    local name=$1; shift
    log "error: $*"
    if [[ -f $LOGS/$name.log ]]; then
        log "last lines of $LOGS/$name.log:"
        tail -n 40 "$LOGS/$name.log" >&2
    fi
    log "stopping the partially started cluster (logs kept in $LOGS)"
    stop_processes
    exit 1
}

# Poll a command until it succeeds; fail (with the component's log) after a timeout.
wait_for() {
    local name=$1 timeout=$2 what=$3; shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || fail_with_log "$name" "$name exited while waiting for $what"
        ((SECONDS < deadline)) || fail_with_log "$name" "timed out after ${timeout}s waiting for $what"
        sleep 0.5
    done
}

# --- certificates and kubeconfigs ------------------------------------------------------

# Client or server cert signed by the test CA. $3 = extensions in openssl -addext form.
sign_cert() {
    local name=$1 subj=$2 ext=$3
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" \
        -subj "$subj" -addext "$ext" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 365 -copy_extensions copy -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr"
}

gen_certs() {
    mkdir -p "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=hyperpage-e2e-ca" \
        -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    sign_cert apiserver "/CN=kube-apiserver" \
        "subjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    # Client identities: admin is cluster-admin through the system:masters group; the
    # controller-manager and scheduler use their bootstrap RBAC identities.
    sign_cert admin "/O=system:masters/CN=kubernetes-admin" "extendedKeyUsage=clientAuth"
    sign_cert kube-controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    sign_cert kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
    sign_cert kwok "/O=system:masters/CN=kwok-controller" "extendedKeyUsage=clientAuth"
    sign_cert oidc "/CN=oidc-provider" "subjectAltName=IP:127.0.0.1,DNS:localhost"
    # The portals' client secret at the provider.
    openssl rand -hex 24 >"$PKI/oidc-client-secret"
    # Service-account token signing pair (TokenRequest / `kubectl create token`).
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    chmod 600 "$PKI"/*.key
}

# Kubeconfig with the certs embedded, so it can be copied anywhere on this machine.
write_kubeconfig() {
    local file=$1 user=$2 server=$3
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hyperpage-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$user.crt")
    client-key-data: $(base64 -w0 "$PKI/$user.key")
contexts:
- name: hyperpage-e2e
  context:
    cluster: hyperpage-e2e
    user: $user
current-context: hyperpage-e2e
EOF
    chmod 600 "$file"
}

# --- cluster state -----------------------------------------------------------------------

readyz() {
    local port; port=$(cat "$RUN_DIR/apiserver-port")
    [[ $(curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:$port/readyz" 2>/dev/null) == ok ]]
}

# True if every component `up` started is alive and the apiserver is ready.
local_cluster_running() {
    [[ -f $RUN_DIR/apiserver-port && -f $ADMIN_KUBECONFIG ]] || return 1
    local c
    for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
    readyz
}

# Does the cluster in the given kubeconfig answer? Uses a kubectl already on PATH if
# there is one, so a user with a real cluster does not wait for our build.
external_cluster_answers() {
    local kubectl
    kubectl=$(command -v kubectl || true)
    if [[ -z $kubectl ]]; then build; kubectl=$(bin_dir)/kubectl; fi
    KUBECONFIG=$1 "$kubectl" version --request-timeout=5s >/dev/null 2>&1 \
        && KUBECONFIG=$1 "$kubectl" get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

stop_processes() {
    [[ -d $PIDS ]] || return 0
    local i name pid pids=()
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        name=${COMPONENTS[i]}
        if alive "$name"; then
            pid=$(pid_of "$name"); pids+=("$pid")
            kill -TERM "$pid" 2>/dev/null || true
        fi
        rm -f "$PIDS/$name"
    done
    ((${#pids[@]})) || return 0
    log "stopping ${#pids[@]} process(es): ${pids[*]}"
    for i in $(seq 1 40); do # up to ~10s for a clean shutdown
        local left=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
        ((${#left[@]})) || return 0
        sleep 0.25
    done
    log "killing ${left[*]} (did not exit on TERM)"
    kill -KILL "${left[@]}" 2>/dev/null || true
}

write_env_file() {
    cat >"$ENV_FILE" <<EOF
export KUBECONFIG=$ADMIN_KUBECONFIG
export PATH=$(bin_dir):\$PATH
export HYPERPAGE_E2E_AUDIT_LOG=$AUDIT_LOG
export HYPERPAGE_E2E_OIDC_ISSUER=https://127.0.0.1:$(cat "$RUN_DIR/oidc-port")
export HYPERPAGE_E2E_OIDC_CLIENT_ID=$OIDC_CLIENT_ID
export HYPERPAGE_E2E_OIDC_CLIENT_SECRET_FILE=$PKI/oidc-client-secret
export HYPERPAGE_E2E_OIDC_CA_FILE=$PKI/ca.crt
export HYPERPAGE_E2E_OIDC_USERS=$E2E_DIR/oidc-users.json
export HYPERPAGE_E2E_REGISTRY=127.0.0.1:$(cat "$RUN_DIR/registry-port")
EOF
}

# --- up / down ---------------------------------------------------------------------------

# The CNCF distribution registry on loopback (plain HTTP, no auth: only this machine reaches
# it), storage under .run/: e2e/image.sh push puts the image and the chart there, and the
# chart test installs from oci://$HYPERPAGE_E2E_REGISTRY/charts.
start_registry() {
    local port; port=$(free_ports 1)
    echo "$port" >"$RUN_DIR/registry-port"
    mkdir -p "$RUN_DIR/registry"
    cat >"$RUN_DIR/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $RUN_DIR/registry}, delete: {enabled: true}}
http: {addr: "127.0.0.1:$port"}
EOF
    start registry "$(tool registry)" serve "$RUN_DIR/registry.yml"
    wait_for registry 30 "the registry's /v2/" curl -fsS --max-time 2 "http://127.0.0.1:$port/v2/"
}

create_nodes() {
    local kubectl=$1 node
    for node in "${NODES[@]}"; do
        # kwok manages nodes carrying its annotation; no kwok taint, so ordinary
        # Deployments schedule onto them without tolerations.
        "$kubectl" apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $node
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
status:
  allocatable: {cpu: "32", memory: 64Gi, pods: "$KWOK_NODE_PODS"}
  capacity: {cpu: "32", memory: 64Gi, pods: "$KWOK_NODE_PODS"}
EOF
    done
}

up() {
    local t0=$SECONDS
    if [[ -n ${KUBECONFIG:-} && ${KUBECONFIG} != "$ADMIN_KUBECONFIG" ]]; then
        if external_cluster_answers "$KUBECONFIG"; then
            log "KUBECONFIG=$KUBECONFIG answers; using that cluster (nothing started)"
            return 0
        fi
        log "warning: KUBECONFIG=$KUBECONFIG does not answer; starting a local cluster instead"
    fi
    if local_cluster_running; then
        write_env_file
        log "local cluster already running; reusing it"
        usage_hint
        return 0
    fi
    if [[ -d $RUN_DIR ]]; then
        log "cleaning up a stale $RUN_DIR"
        stop_processes
        rm -rf "$RUN_DIR"
    fi

    build
    tool oidc-provider >/dev/null
    tool registry >/dev/null
    local bin; bin=$(bin_dir)
    mkdir -p "$PIDS" "$LOGS"
    mkdir -m 700 "$RUN_DIR/etcd" # etcd warns about anything looser
    gen_certs

    local etcd_port etcd_peer api_port kcm_port sched_port oidc_port
    read -r etcd_port etcd_peer api_port kcm_port sched_port oidc_port <<<"$(free_ports 6)"
    echo "$api_port" >"$RUN_DIR/apiserver-port"
    echo "$oidc_port" >"$RUN_DIR/oidc-port"
    local issuer=https://127.0.0.1:$oidc_port
    local server=https://127.0.0.1:$api_port c
    write_kubeconfig "$ADMIN_KUBECONFIG" admin "$server"
    for c in kube-controller-manager kube-scheduler kwok; do
        write_kubeconfig "$RUN_DIR/$c.kubeconfig" "$c" "$server"
    done

    # etcd: plain HTTP is fine, it only listens on loopback. fsync off: throwaway data.
    start etcd "$bin/etcd" --name=e2e --data-dir="$RUN_DIR/etcd" \
        --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
        --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
        --initial-cluster="e2e=http://127.0.0.1:$etcd_peer" --initial-cluster-state=new \
        --unsafe-no-fsync=true --quota-backend-bytes=2147483648 --log-level=warn
    wait_for etcd 30 "etcd health" curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health"

    start oidc-provider "$(tool oidc-provider)" -listen="127.0.0.1:$oidc_port" -issuer="$issuer" \
        -users="$E2E_DIR/oidc-users.json" -client-id="$OIDC_CLIENT_ID" \
        -client-secret-file="$PKI/oidc-client-secret" -cert="$PKI/oidc.crt" -key="$PKI/oidc.key"
    wait_for oidc-provider 30 "the OpenID provider's discovery document" \
        curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "$issuer/.well-known/openid-configuration"
    start_registry

    # The requestheader CA only exists so the delegated-auth CA watchers in the controller
    # manager and scheduler stop logging errors; no cert with the allowed name is issued.
    # No endpoint reconciler: Endpoints may not hold a loopback IP, so it would only fail
    # every 10s (the `kubernetes` Service still exists, without endpoints).
    # The audit log is never rotated (the default rotates at 100 MB: a long chaos or bench run
    # would lose what its readers, which keep an offset into one file, have not read yet).
    start kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$etcd_port" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
        --cert-dir="$RUN_DIR/apiserver-certs" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --authorization-mode=Node,RBAC \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --allow-privileged=true \
        --audit-policy-file="$AUDIT_POLICY" --audit-log-path="$AUDIT_LOG" \
        --audit-log-format=json --audit-log-mode=blocking --audit-log-maxsize=1000000 \
        --oidc-issuer-url="$issuer" --oidc-client-id="$OIDC_CLIENT_ID" --oidc-ca-file="$PKI/ca.crt" \
        --oidc-username-claim=email --oidc-username-prefix=oidc: \
        --oidc-groups-claim=groups --oidc-groups-prefix=oidc: \
        --endpoint-reconciler-type=none --profiling=false
    wait_for kube-apiserver 90 "kube-apiserver /readyz" readyz

    start kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig="$RUN_DIR/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig="$RUN_DIR/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig="$RUN_DIR/kube-controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$RUN_DIR/kcm-certs" \
        --leader-elect=false \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --use-service-account-credentials=true \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --controllers='*' --profiling=false "${CONTROL_PLANE_QPS[@]}"
    start kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig="$RUN_DIR/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig="$RUN_DIR/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig="$RUN_DIR/kube-scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$sched_port" --cert-dir="$RUN_DIR/scheduler-certs" \
        --leader-elect=false --profiling=false "${CONTROL_PLANE_QPS[@]}"
    # No --node-port/--server-address: kwok then opens no listener at all. Node IP is
    # loopback so anything that dials a "kubelet" stays on this machine. Leases must be
    # enabled explicitly (0 without a KwokConfiguration): the heartbeat-with-lease stage
    # only refreshes node status every ~10 min and relies on them.
    start kwok "$bin/kwok" --kubeconfig="$RUN_DIR/kwok.kubeconfig" \
        --config="$(kwok_stages)" \
        --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
        --node-ip=127.0.0.1 --cidr="$POD_CIDR" --node-lease-duration-seconds=40
    wait_for kube-controller-manager 60 "kube-controller-manager /healthz" \
        curl -fsSk --max-time 2 "https://127.0.0.1:$kcm_port/healthz"
    wait_for kube-scheduler 60 "kube-scheduler /healthz" \
        curl -fsSk --max-time 2 "https://127.0.0.1:$sched_port/healthz"

    local kubectl=$bin/kubectl
    export KUBECONFIG=$ADMIN_KUBECONFIG
    create_nodes "$kubectl" || fail_with_log kube-apiserver "creating the kwok nodes failed"
    wait_for kwok 60 "nodes Ready" \
        "$kubectl" wait --for=condition=Ready node -l type=kwok --timeout=2s
    # Pods cannot be created in `default` until its ServiceAccount exists.
    wait_for kube-controller-manager 60 "the default ServiceAccount" \
        "$kubectl" get serviceaccount default -n default

    write_env_file
    log "cluster up in $((SECONDS - t0))s (kube-apiserver $server, ${#NODES[@]} kwok nodes)"
    usage_hint
}

# --- single components (the reliability suite's faults) ----------------------------------

# Stops one component `up` started, keeping its command line in $RUN_DIR/NAME.cmdline so
# start_component can bring the same process back (same ports, data dir, flags).
stop_component() {
    local name=$1 pid
    alive "$name" || die "$name is not running"
    pid=$(pid_of "$name")
    cp "/proc/$pid/cmdline" "$RUN_DIR/$name.cmdline"
    kill -TERM "$pid"
    for _ in $(seq 1 40); do # up to ~10s for a clean shutdown
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDS/$name"
    log "stopped $name (pid $pid)"
}

# Starts a component stopped by stop_component and waits until it answers.
start_component() {
    local name=$1 argv=()
    [[ -f $RUN_DIR/$name.cmdline ]] || die "$name was not stopped by stop-component"
    alive "$name" && die "$name is already running"
    mapfile -d '' -t argv <"$RUN_DIR/$name.cmdline"
    # The log of the first run is kept beside the new one.
    [[ -f $LOGS/$name.log ]] && cat "$LOGS/$name.log" >>"$LOGS/$name.previous.log"
    start "$name" "${argv[@]}"
    case $name in
        kube-apiserver) wait_for "$name" 90 "kube-apiserver /readyz" readyz ;;
        etcd)
            local url; url=$(printf '%s\n' "${argv[@]}" | sed -n 's/^--listen-client-urls=//p')
            wait_for "$name" 30 "etcd health" curl -fsS --max-time 2 "$url/health"
            ;;
        *) wait_for "$name" 10 "$name to stay up" sleep 1 ;;
    esac
    log "started $name again (pid $(pid_of "$name"))"
}

usage_hint() {
    cat >&2 <<EOF

  source $ENV_FILE; kubectl get nodes
  (or: eval "\$($E2E_DIR/cluster.sh env)")
  audit log: $AUDIT_LOG    logs: $LOGS/    stop: $E2E_DIR/cluster.sh down
EOF
}

down() {
    stop_processes
    rm -rf "$RUN_DIR"
    log "cluster down ($RUN_DIR removed)"
}

# up/down from parallel test processes must not interleave; the lock lives outside .run/
# because `down` deletes that directory.
lock_cluster() {
    exec 8>"$E2E_DIR/.run.lock"
    flock 8
}

main() {
    case "${1:-}" in
        build) local t=$SECONDS; build; tool oidc-provider >/dev/null; tool registry >/dev/null; log "binaries ready in $(bin_dir) ($((SECONDS - t))s)" ;;
        up) lock_cluster; up ;;
        down) lock_cluster; down ;;
        env)
            [[ -f $ENV_FILE ]] || die "no local cluster (run: $E2E_DIR/cluster.sh up)"
            echo "# source $ENV_FILE"
            cat "$ENV_FILE"
            ;;
        bin-dir) build; bin_dir ;;
        free-ports) free_ports "${2:-1}" ;;
        tool) [[ -n ${2:-} ]] || die "usage: $0 tool NAME [BINARY]"; tool "$2" "${3:-}" ;;
        stop-component) [[ -n ${2:-} ]] || die "usage: $0 stop-component NAME"; lock_cluster; stop_component "$2" ;;
        start-component) [[ -n ${2:-} ]] || die "usage: $0 start-component NAME"; lock_cluster; start_component "$2" ;;
        restart-component)
            [[ -n ${2:-} ]] || die "usage: $0 restart-component NAME [SECONDS]"
            lock_cluster; stop_component "$2"; sleep "${3:-0}"; start_component "$2"
            ;;
        nodes)
            export KUBECONFIG=$ADMIN_KUBECONFIG
            create_nodes "$(bin_dir)/kubectl" || die "creating the kwok nodes failed"
            "$(bin_dir)/kubectl" wait --for=condition=Ready node -l type=kwok --timeout=60s >/dev/null
            ;;
        status)
            if local_cluster_running; then echo "running ($ADMIN_KUBECONFIG)"; else echo "not running"; exit 1; fi
            ;;
        *)
            echo "usage: $0 {build|up|down|env|bin-dir|free-ports N|tool NAME [BINARY]|status|stop-component NAME|start-component NAME|restart-component NAME [SECONDS]|nodes}" >&2
            exit 2
            ;;
    esac
}

# Sourcing the script (for debugging) defines the functions without running anything.
# `exit` on the same line: bash reads scripts lazily, so nothing after this line is ever
# read, and editing the file while `up` or `build` runs cannot derail the running copy.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; exit $?; fi
