# Developer entry points. `make run` and `make test` are the two commands the README promises.
.PHONY: run test fmt lint unit crds e2e cluster-up cluster-down build

run: ## the product working offline: local control plane, demo data source, operator, portal; prints the URL (Ctrl-C stops all)
	bash e2e/run.sh

test: ## everything CI runs: fmt, clippy, unit tests, CRD drift, end-to-end suite
	bash e2e/test.sh

build:
	cargo build --release --locked

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit:
	cargo test --workspace --locked
	cargo test --locked --example scale

crds: ## regenerate crds/ (and the chart's copy) from the Rust types
	cargo run --quiet --locked -- crd --out-dir crds
	if [ -d charts/hyperpage-operator ]; then cargo run --quiet --locked -- crd --out-dir charts/hyperpage-operator/crds; fi

e2e: ## the end-to-end suite against the running cluster (make cluster-up; source e2e/.run/env)
	cargo test --locked --test e2e -- --ignored --test-threads=1

cluster-up:
	bash e2e/cluster.sh up

cluster-down:
	bash e2e/cluster.sh down

.PHONY: chaos soak
chaos: ## the reliability suite: faults at random moments under load, invariants after each (RELIABILITY.md; CHAOS_TRIALS, CHAOS_FAULTS)
	bash e2e/cluster.sh up && . e2e/.run/env && cargo test --locked --test chaos -- --ignored --exact chaos --nocapture

soak: ## 30 minutes of steady load, sampling the operators' RSS and open FDs (SOAK_MINUTES)
	bash e2e/cluster.sh up && . e2e/.run/env && cargo test --locked --test chaos -- --ignored --exact soak --nocapture

.PHONY: image image-push
image: ## the OCI image from the release binary, without Docker: target/image/hyperpage-<version>.oci.tar
	bash e2e/image.sh build

image-push: ## push that image and the chart to REGISTRY (e.g. REGISTRY=$$HYPERPAGE_E2E_REGISTRY, the local one)
	bash e2e/image.sh push $(REGISTRY)

.PHONY: bench
bench: ## the scale benchmark on a fresh local control plane per size; writes BENCHMARKS.md (see bench/run.sh)
	bash bench/run.sh

.PHONY: rules-test
rules-test: ## promtool unit tests of the chart's alerts (tests/prometheus/alerts.test.yaml; part of make test)
	bash e2e/rules-test.sh
