package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// exported are the metric names the program registers, read from
// internal/metrics (so a rename there fails here).
func exported(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "internal/metrics/metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`Name:\s*"(reverse_http_[a-z_]+)"`).FindAllStringSubmatch(string(b), -1) {
		names[m[1]] = true
	}
	if !names["reverse_http_tunnels_total"] {
		t.Fatalf("found no metric names in internal/metrics/metrics.go: %v", names)
	}
	return names
}

var metricName = regexp.MustCompile(`\breverse_http_[a-z_]+`)

func checkMetricNames(t *testing.T, where, expr string) {
	t.Helper()
	names := exported(t)
	for _, n := range metricName.FindAllString(expr, -1) {
		base := n
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(n, suffix); ok && names[b] {
				base = b
			}
		}
		if !names[base] {
			t.Errorf("%s: %s is not a metric of internal/metrics", where, n)
		}
	}
}

// TestPrometheusRules runs promtool's syntax check and the rules' unit
// tests (alerts_test.yml), and checks the metric names they use.
func TestPrometheusRules(t *testing.T) {
	rules := filepath.Join(repoRoot, "deploy/prometheus/alerts.yml")
	b, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			checkMetricNames(t, r.Alert, r.Expr)
		}
	}
	promtool := needTool(t, "promtool")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = filepath.Dir(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestGrafanaDashboard checks that the dashboard is JSON Grafana can
// import, that its queries use metrics the program exports, and that each
// query parses as PromQL (promtool, with Grafana's variables filled in).
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/grafana/reverse-http.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("uid %q, title %q, %d panels", d.UID, d.Title, len(d.Panels))
	}
	ids := map[int]bool{}
	var exprs []string
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			checkMetricNames(t, "panel "+p.Title, q.Expr)
			exprs = append(exprs, q.Expr)
		}
	}
	// The metrics the dashboard must show. A name also fails above if
	// internal/metrics renames it.
	shown := map[string]bool{}
	for _, n := range metricName.FindAllString(strings.Join(exprs, "\n"), -1) {
		shown[n] = true
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			shown[strings.TrimSuffix(n, suffix)] = true
		}
	}
	for _, m := range []string{"reverse_http_agents_connected", "reverse_http_agent_connections_total", "reverse_http_tunnels_open",
		"reverse_http_tunnels_total", "reverse_http_tunnel_bytes_total", "reverse_http_tunnel_open_seconds",
		"reverse_http_tunnels_forwarded_total", "reverse_http_store_operations_total", "reverse_http_store_errors_total",
		"reverse_http_build_info"} {
		if !shown[m] {
			t.Errorf("no panel shows %s", m)
		}
	}

	promtool := needTool(t, "promtool")
	vars := strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$instance", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rs []rule
	for _, e := range exprs {
		rs = append(rs, rule{Record: "dashboard:query", Expr: vars.Replace(e)})
	}
	out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rs}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
}
