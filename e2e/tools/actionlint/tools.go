//go:build tools

// Package tools pins actionlint, which `make test` runs over .github/workflows (the release
// workflows cannot run here; linting them is what can).
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"
