//go:build tools

// Package tools pins helm in this module's go.mod, so `go build` of its main package
// uses the version recorded here (and go.sum the sums of everything it brings).
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
