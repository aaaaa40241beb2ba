#!/usr/bin/env bash
# The newcomer's entry point: with no KUBECONFIG it starts the local control plane (the
# embedded default), installs the CRDs, applies examples/ into the `hyperpage-demo`
# namespace and runs the operator in the foreground. With KUBECONFIG set it uses that cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NAMESPACE=${HYPERPAGE_DEMO_NAMESPACE:-hyperpage-demo}

bash e2e/setup.sh run

if [[ -z "${KUBECONFIG:-}" ]]; then
    bash e2e/cluster.sh up
    # shellcheck source=/dev/null
    source e2e/.run/env
    local_cluster=true
else
    command -v kubectl >/dev/null || PATH="$(bash e2e/cluster.sh bin-dir):$PATH"
    local_cluster=false
fi

cargo build --release --locked
kubectl apply --server-side --field-manager=hyperpage-run -f crds/
kubectl wait --for condition=Established --timeout=60s crd/workspaces.hyperpage.dev crd/toolbindings.hyperpage.dev
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$NAMESPACE" -f examples/

cat <<INFO

Hyperpage operator is starting in the foreground (Ctrl-C stops it).
In another terminal:
$( $local_cluster && printf '    source %s/e2e/.run/env' "$PWD" )
    kubectl get workspaces,toolbindings -n $NAMESPACE
    kubectl describe workspace payments -n $NAMESPACE
    curl -s localhost:9090/metrics | grep ^hyperpage_
$( $local_cluster && printf '\nThe local control plane keeps running; stop it with: make cluster-down\n' )
INFO

# The examples carry placeholder tokens for real SaaS endpoints, so the demo does not poll
# unless asked: put real tokens into the Secrets and run with HYPERPAGE_POLLING=true.
export HYPERPAGE_POLLING=${HYPERPAGE_POLLING:-false}
echo "Polling the tools: $HYPERPAGE_POLLING (HYPERPAGE_POLLING=true to poll the endpoints in examples/)"
export RUST_LOG=${RUST_LOG:-info}
exec ./target/release/hyperpage operator --admin-address 127.0.0.1:9090 --lease-namespace "$NAMESPACE"
