//go:build tools

// Package tools pins the kwok binary that e2e/cluster.sh builds.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
