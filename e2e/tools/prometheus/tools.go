//go:build tools

// Package tools pins Prometheus for e2e/cluster.sh `tool prometheus`: promtool unit-tests the
// chart's alerting rules in `make test`, and the end-to-end suite runs a real Prometheus
// server (no web UI assets: only its HTTP API is used) loaded with those rules.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
