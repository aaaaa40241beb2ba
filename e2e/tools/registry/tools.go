//go:build tools

// Package tools pins the CNCF distribution registry, which the harness starts on loopback
// so `make image` and `helm push` have a real OCI registry to push to and install from.
package tools

import _ "github.com/distribution/distribution/v3/cmd/registry"
