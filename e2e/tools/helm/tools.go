//go:build tools

// Package tools pins the helm binary that e2e/cluster.sh builds.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
