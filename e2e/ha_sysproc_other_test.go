//go:build !linux

package e2e

// limitFiles does nothing where prlimit(2) is not available.
func limitFiles(pid int, n uint64) error { return nil }
