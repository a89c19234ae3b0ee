package cli

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/reverse-http/reverse-http/internal/audit"
	"github.com/reverse-http/reverse-http/internal/metrics"
)

// AuditConfig is --audit.* on proxy, lb and agent.
type AuditConfig struct {
	File string `placeholder:"PATH" help:"Write the audit log, one JSON line per tunnel and absolute-form request (refused ones too), to this file; - is stdout. Reopened on SIGUSR1 (logrotate). Empty: off."`
	Node string `placeholder:"NAME" help:"Node name in every audit line (default: this host's name)."`
}

// open makes the audit log, recording its drops in m; nil without
// --audit.file.
func (c AuditConfig) open(m *metrics.Metrics, log *slog.Logger) (*audit.Log, error) {
	if c.File == "" {
		return nil, nil
	}
	node := c.Node
	if node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("--audit.node: not given, and no host name: %w", err)
		}
		node = h
	}
	l, err := audit.New(c.File, node, m, log.With("component", "audit"))
	if err != nil {
		return nil, fmt.Errorf("--audit.file: %w", err)
	}
	return l, nil
}
