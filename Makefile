# Developer entry points. `make run` and `make test` are the two commands the README promises.
.PHONY: run test fmt lint unit crds e2e cluster-up cluster-down build

run: ## start the local control plane (unless KUBECONFIG is set), apply examples/, run the operator
	bash e2e/run.sh

test: ## everything CI runs: fmt, clippy, unit tests, CRD drift, end-to-end suite
	bash e2e/test.sh

build:
	cargo build --release --locked

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

unit:
	cargo test --locked

crds: ## regenerate crds/ (and the chart's copy) from the Rust types
	cargo run --quiet --locked -- crd --out-dir crds
	if [ -d charts/hyperpage-operator ]; then cargo run --quiet --locked -- crd --out-dir charts/hyperpage-operator/crds; fi

e2e: ## the end-to-end suite against the running cluster (make cluster-up; source e2e/.run/env)
	cargo test --locked --test e2e -- --ignored --test-threads=1

cluster-up:
	bash e2e/cluster.sh up

cluster-down:
	bash e2e/cluster.sh down

.PHONY: bench
bench: ## the scale benchmark on a fresh local control plane per size; writes BENCHMARKS.md (see bench/run.sh)
	bash bench/run.sh
