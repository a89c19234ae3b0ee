package auth

import (
	"fmt"
	"strings"
)

// maxAgentPatterns bounds the agent ID patterns of one client or token.
const maxAgentPatterns = 256

// AgentPatterns are the agents a client may use: exact agent IDs and
// patterns where '*' stands for any run of characters (none included),
// "*" alone for every agent.
type AgentPatterns []string

// ParseAgentPatterns checks patterns: each is an agent ID (see
// CheckAgentID) in which '*' may also appear. Elements may hold several
// comma-separated patterns; spaces around each are trimmed and empty ones
// skipped. At least one pattern is required.
func ParseAgentPatterns(patterns []string) (AgentPatterns, error) {
	var out AgentPatterns
	for _, elem := range patterns {
		for p := range strings.SplitSeq(elem, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			if err := checkPattern(p); err != nil {
				return nil, fmt.Errorf("agent pattern %s: %v", quoteIfOdd(p), err)
			}
			if len(out) == maxAgentPatterns {
				return nil, fmt.Errorf("more than %d agent patterns", maxAgentPatterns)
			}
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no agent patterns: name the agents (IDs, or patterns with '*'; '*' for all)")
	}
	return out, nil
}

// Match reports whether agentID is one of the patterns.
func (ps AgentPatterns) Match(agentID string) bool {
	for _, p := range ps {
		if matchWildcard(p, agentID) {
			return true
		}
	}
	return false
}

// matchWildcard reports whether s matches pattern p, where '*' matches
// any run of bytes. Linear backtracking: O(len(p)*len(s)) at worst, both
// at most 256 bytes.
func matchWildcard(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && p[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
