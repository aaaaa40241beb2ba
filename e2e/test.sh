#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests, the CRD drift check, then the
# end-to-end suite against a real control plane (the local one from e2e/cluster.sh, started
# and stopped here, or the cluster KUBECONFIG points at).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "set-up (e2e/setup.sh: installs what this machine lacks)"
bash e2e/setup.sh test

# In CI, Rust's build output is kept under the user's cache directory like the control
# plane binaries, so only the first run on a machine pays for a cold build.
if [[ -n "${CI:-}" ]]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperpage/cargo-target}
fi

# The Go programs the suite needs (control plane, registry, crane, ...) build in the
# background while cargo builds: each build alone leaves a core idle much of the time. A
# warm cache makes this a no-op.
prebuild_log=$(mktemp)
# Its own process group (setsid), so an early failure here stops the whole build.
# shellcheck disable=SC2016 # $t expands in the inner shell
setsid bash -c 'bash e2e/cluster.sh build && for t in crane oci-image actionlint prometheus; do bash e2e/cluster.sh tool "$t" >/dev/null; done' \
    >"$prebuild_log" 2>&1 </dev/null &
prebuild=$!
trap 'kill -- -"$prebuild" 2>/dev/null; rm -f "$prebuild_log"' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit tests (cargo test, with the demo data source of make run)"
cargo test --workspace --locked

step "the benchmark's own tests (cargo test --example scale: its audit-log reader and report)"
cargo test --locked --example scale

step "actionlint .github/workflows (the release workflows cannot run here; they are linted)"
"$(bash e2e/cluster.sh tool actionlint)" -no-color -shellcheck=shellcheck

step "CRDs: hyperpage crd == crds/*.yaml"
diff -u <(cargo run --quiet --locked -- crd) <(cat crds/*.yaml)

step "the image (make image: release build, OCI archive under target/image/; the suite runs it)"
bash e2e/image.sh build

step "waiting for the background Go builds"
wait "$prebuild" || { cat "$prebuild_log" >&2; exit 1; }
grep -h 'built\|complete' "$prebuild_log" >&2 || true
trap - EXIT
rm -f "$prebuild_log"

step "promtool test rules: every alert of the chart fires after its for: and stays silent on healthy input (e2e/rules-test.sh)"
bash e2e/rules-test.sh

if [[ -z "${KUBECONFIG:-}" ]]; then
    step "local control plane (e2e/cluster.sh up)"
    # A cluster the developer started stays up; one started here is stopped at the end.
    if ! bash e2e/cluster.sh status >/dev/null 2>&1; then
        trap 'bash e2e/cluster.sh down' EXIT
    fi
    bash e2e/cluster.sh up
    # shellcheck source=/dev/null
    source e2e/.run/env
else
    step "using the cluster in KUBECONFIG=$KUBECONFIG"
    # The suite needs kubectl and helm; take the pinned ones unless the user has their own.
    command -v kubectl >/dev/null || PATH="$(bash e2e/cluster.sh bin-dir):$PATH"
fi

step "end-to-end suite (cargo test --test e2e -- --ignored)"
cargo test --locked --test e2e -- --ignored --test-threads=1

step "make run in headless Chromium: URL, live demo data, Ctrl-C stops it all (e2e/browser/demo.test.mjs)"
# Built first so that make run's own build is a no-op and the test's clock measures the demo.
cargo build --release --locked -p hyperpage -p hyperpage-demo
node e2e/browser/demo.test.mjs
