//go:build tools

// Package tools pins the etcd server command built by ../provision.sh, so that
// `go mod tidy` keeps every module it needs in go.mod and go.sum.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
