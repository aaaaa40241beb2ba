//go:build tools

// Package tools pins go-containerregistry's crane, which `make image` uses to assemble the
// image from a layer tarball on an empty base (no Docker, no base pulled) and to push it.
package tools

import _ "github.com/google/go-containerregistry/cmd/crane"
