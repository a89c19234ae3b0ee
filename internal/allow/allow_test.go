package allow_test

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/reverse-http/reverse-http/internal/allow"
)

// mustParse parses patterns or fails the test.
func mustParse(t testing.TB, patterns ...string) *allow.List {
	t.Helper()
	l, err := allow.Parse(patterns)
	if err != nil {
		t.Fatalf("Parse(%q): %v", patterns, err)
	}
	return l
}

// checkHostPort asserts that both Allowed and AllowedHostPort give want for
// the destination hostport.
func checkHostPort(t *testing.T, l *allow.List, hostport string, want bool) {
	t.Helper()
	if got := l.AllowedHostPort(hostport); got != want {
		t.Errorf("AllowedHostPort(%q) = %v, want %v", hostport, got, want)
	}
	host, portText, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("bad test address %q: %v", hostport, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		t.Fatalf("bad test port %q: %v", hostport, err)
	}
	if got := l.Allowed(host, port); got != want {
		t.Errorf("Allowed(%q, %d) = %v, want %v", host, port, got, want)
	}
}

// patternForms holds every documented pattern form, as accepted by the
// reference implementation.
var patternForms = []string{
	"localhost",
	"localhost:80",
	"localhost:1000-2000",
	"*.zone",
	"*.zone:80",
	"*.zone:1000-2000",
	"127.0.0.1",
	"127.0.0.1:80",
	"127.0.0.1:1000-2000",
	"10.0.0.1/8",
	"10.0.0.1/8:80",
	"10.0.0.1/8:1000-2000",
	"1000::/16",
	"1000::/16:80",
	"1000::/16:1000-2000",
	"[2001:db8::1]/64",
	"[2001:db8::1]/64:80",
	"[2001:db8::1]/64:1000-2000",
	"2001:db8::1",
	"[2001:db8::1]",
	"[2001:db8::1]:80",
	"[2001:db8::1]:1000-2000",
}

func TestPatternForms(t *testing.T) {
	// Hosts every list below denies, whatever the port.
	strangers := []string{
		"example.com:80",
		"1.2.3.4:80",
		"[2607:f8b0:4006:800::200e]:443",
	}
	tests := []struct {
		pattern string
		allowed []string
		denied  []string
	}{
		{
			pattern: "localhost",
			allowed: []string{"localhost:1", "localhost:80", "localhost:65535", "LOCALHOST:80", "LocalHost.:443"},
			denied: []string{
				"localhost:0", "localhost:65536", "localhost..:80", "localhost.localdomain:80",
				"xlocalhost:80", "a.localhost:80", "127.0.0.1:80", "[::1]:80",
			},
		},
		{
			pattern: "localhost:80",
			allowed: []string{"localhost:80", "LOCALHOST.:80"},
			denied:  []string{"localhost:79", "localhost:81", "localhost:8080", "localhost:443"},
		},
		{
			pattern: "localhost:1000-2000",
			allowed: []string{"localhost:1000", "localhost:1500", "LocalHost:2000"},
			denied:  []string{"localhost:999", "localhost:2001", "localhost:80"},
		},
		{
			pattern: "*.zone",
			allowed: []string{
				"zone:80", "ZONE:80", "zone.:1", "a.zone:80", "A.B.Zone:65535", "a-b.zone.:443",
				"_srv.zone:80", "zone.evil.zone:80",
			},
			denied: []string{
				"evilzone:80", "zone.evil:80", "zone.com:80", "zon:80", "one:80", ".zone:80",
				"a..zone:80", "zone..:80", "*.zone:80", "a.zone:0", "10.0.0.1:80",
			},
		},
		{
			pattern: "*.zone:80",
			allowed: []string{"zone:80", "a.zone:80", "A.B.ZONE.:80"},
			denied:  []string{"zone:81", "a.zone:79", "evilzone:80"},
		},
		{
			pattern: "*.zone:1000-2000",
			allowed: []string{"zone:1000", "a.zone:1500", "b.a.zone:2000"},
			denied:  []string{"zone:999", "a.zone:2001", "evilzone:1500"},
		},
		{
			pattern: "127.0.0.1",
			allowed: []string{"127.0.0.1:1", "127.0.0.1:65535", "[::ffff:127.0.0.1]:80"},
			denied: []string{
				"127.0.0.2:80", "localhost:80", "[::1]:80", "127.1:80", "0x7f.0.0.1:80",
				"127.0.0.1:0", "[::127.0.0.1]:80",
			},
		},
		{
			pattern: "127.0.0.1:80",
			allowed: []string{"127.0.0.1:80", "[::ffff:127.0.0.1]:80"},
			denied:  []string{"127.0.0.1:79", "127.0.0.1:81", "127.0.0.2:80"},
		},
		{
			pattern: "127.0.0.1:1000-2000",
			allowed: []string{"127.0.0.1:1000", "127.0.0.1:2000"},
			denied:  []string{"127.0.0.1:999", "127.0.0.1:2001"},
		},
		{
			pattern: "10.0.0.1/8",
			allowed: []string{"10.0.0.0:80", "10.1.2.3:80", "10.255.255.255:65535", "[::ffff:10.1.2.3]:80"},
			denied:  []string{"11.0.0.0:80", "9.255.255.255:80", "[::a01:203]:80", "[a00::]:80", "ten.example:80"},
		},
		{
			pattern: "10.0.0.1/8:80",
			allowed: []string{"10.1.2.3:80"},
			denied:  []string{"10.1.2.3:81", "11.1.2.3:80"},
		},
		{
			pattern: "10.0.0.1/8:1000-2000",
			allowed: []string{"10.1.2.3:1000", "10.1.2.3:2000"},
			denied:  []string{"10.1.2.3:999", "10.1.2.3:2001"},
		},
		{
			pattern: "1000::/16",
			allowed: []string{"[1000::]:80", "[1000:ffff::1]:80", "[1000::1]:65535"},
			// 16.0.0.1 shares its first bytes with 1000::; IPv4 never matches an IPv6 CIDR.
			denied: []string{"[1001::]:80", "[fff::]:80", "16.0.0.1:80", "[::ffff:16.0.0.1]:80"},
		},
		{
			pattern: "1000::/16:80",
			allowed: []string{"[1000::1]:80"},
			denied:  []string{"[1000::1]:81", "[1001::1]:80"},
		},
		{
			pattern: "1000::/16:1000-2000",
			allowed: []string{"[1000::1]:1000", "[1000::1]:2000"},
			denied:  []string{"[1000::1]:999", "[1000::1]:2001"},
		},
		{
			pattern: "[2001:db8::1]/64",
			allowed: []string{"[2001:db8::]:80", "[2001:db8::ffff:ffff:ffff:ffff]:80", "[2001:DB8::1]:80"},
			denied:  []string{"[2001:db8:0:1::]:80", "[2001:db9::1]:80"},
		},
		{
			pattern: "[2001:db8::1]/64:80",
			allowed: []string{"[2001:db8::2]:80"},
			denied:  []string{"[2001:db8::2]:81", "[2001:db8:1::2]:80"},
		},
		{
			pattern: "[2001:db8::1]/64:1000-2000",
			allowed: []string{"[2001:db8::2]:1000", "[2001:db8::2]:2000"},
			denied:  []string{"[2001:db8::2]:999", "[2001:db8::2]:2001"},
		},
		{
			pattern: "2001:db8::1",
			allowed: []string{"[2001:db8::1]:80", "[2001:0DB8:0:0:0:0:0:1]:65535"},
			denied:  []string{"[2001:db8::2]:80", "[2001:db8::1%eth0]:80"},
		},
		{
			pattern: "[2001:db8::1]",
			allowed: []string{"[2001:db8::1]:1", "[2001:db8::1]:65535"},
			denied:  []string{"[2001:db8::2]:80", "[2001:db8::1%25eth0]:80"},
		},
		{
			pattern: "[2001:db8::1]:80",
			allowed: []string{"[2001:db8::1]:80"},
			denied:  []string{"[2001:db8::1]:81", "[2001:db8::2]:80"},
		},
		{
			pattern: "[2001:db8::1]:1000-2000",
			allowed: []string{"[2001:db8::1]:1000", "[2001:db8::1]:2000"},
			denied:  []string{"[2001:db8::1]:999", "[2001:db8::1]:2001"},
		},
	}
	covered := make(map[string]bool)
	for _, tc := range tests {
		covered[tc.pattern] = true
		t.Run(tc.pattern, func(t *testing.T) {
			l := mustParse(t, tc.pattern)
			for _, hp := range tc.allowed {
				checkHostPort(t, l, hp, true)
			}
			for _, hp := range append(tc.denied, strangers...) {
				checkHostPort(t, l, hp, false)
			}
		})
	}
	for _, p := range patternForms {
		if !covered[p] {
			t.Errorf("pattern form %q has no test case", p)
		}
	}
}

func TestLists(t *testing.T) {
	tests := []struct {
		name    string
		list    string
		allowed []string
		denied  []string
	}{
		{
			name:    "mixed",
			list:    "localhost,*.zone,127.0.0.1,10.0.0.1/8,1000::/16",
			allowed: []string{"localhost:123", "zone:123", "foo.zone:123", "127.0.0.1:123", "10.1.2.3:123", "[1000::]:123"},
			denied:  []string{"example.com:123", "1.2.3.4:123", "[1001::]:123", "172.217.7.14:443"},
		},
		{
			name:    "all IPv4",
			list:    "0.0.0.0/0",
			allowed: []string{"0.0.0.0:6443", "1.2.3.4:123", "255.255.255.255:1", "[::ffff:1.2.3.4]:80"},
			denied:  []string{"[1001::]:123", "[::]:80", "localhost:123", "example.com:80"},
		},
		{
			name:    "all IPv6",
			list:    "::/0",
			allowed: []string{"[1001::]:123", "[::]:80", "[2607:f8b0:4006:800::200e]:443"},
			denied:  []string{"0.0.0.0:6443", "1.2.3.4:123", "[::ffff:1.2.3.4]:80", "localhost:123"},
		},
		{
			name:    "IPv4-mapped CIDR is IPv4",
			list:    "::ffff:10.0.0.0/104",
			allowed: []string{"10.1.2.3:80", "[::ffff:10.1.2.3]:80"},
			denied:  []string{"11.1.2.3:80", "[::a01:203]:80"},
		},
		{
			name:    "IPv4-mapped address is IPv4",
			list:    "[::ffff:1.2.3.4]:80",
			allowed: []string{"1.2.3.4:80", "[::ffff:1.2.3.4]:80"},
			denied:  []string{"1.2.3.4:81", "1.2.3.5:80"},
		},
		{
			// The reference stopped at the first rule whose host matched.
			name:    "any rule may match",
			list:    "localhost:80,localhost:443,*.zone:80,a.zone:443,10.0.0.0/8:80,10.1.0.0/16:443,10.1.2.3:8080",
			allowed: []string{"localhost:80", "localhost:443", "a.zone:443", "A.ZONE:80", "10.1.2.3:443", "10.1.2.3:8080", "10.9.9.9:80"},
			denied:  []string{"localhost:8080", "b.zone:443", "10.9.9.9:443", "10.1.2.4:8080"},
		},
		{
			name:    "patterns are case-insensitive and may end in a dot",
			list:    "LocalHost.,*.Example.COM.",
			allowed: []string{"localhost:80", "LOCALHOST.:80", "example.com:80", "www.EXAMPLE.com.:443"},
			denied:  []string{"example.org:80", "badexample.com:80"},
		},
		{
			name:    "host names may hold digits, hyphens and underscores",
			list:    "a-1.b_2.example,1password.com",
			allowed: []string{"A-1.B_2.example:80", "1password.com:443"},
			denied:  []string{"a-1.b_2.example.org:80", "x.1password.com:443"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := mustParse(t, tc.list)
			for _, hp := range tc.allowed {
				checkHostPort(t, l, hp, true)
			}
			for _, hp := range tc.denied {
				checkHostPort(t, l, hp, false)
			}
		})
	}
}

func TestAllowedNameAndIP(t *testing.T) {
	l := mustParse(t, "localhost,*.zone:443,127.0.0.1,10.0.0.0/8:80,2001:db8::/32")
	tests := []struct {
		name string
		got  bool
		want bool
	}{
		{"name", l.AllowedName("localhost", 80), true},
		{"zone", l.AllowedName("a.zone", 443), true},
		{"zone wrong port", l.AllowedName("a.zone", 80), false},
		{"IPv4 literal is not a name", l.AllowedName("127.0.0.1", 80), false},
		{"IPv6 literal is not a name", l.AllowedName("2001:db8::1", 80), false},
		{"empty name", l.AllowedName("", 80), false},
		{"IPv4", l.AllowedIP(netip.MustParseAddr("127.0.0.1"), 80), true},
		{"IPv4-mapped", l.AllowedIP(netip.MustParseAddr("::ffff:10.1.2.3"), 80), true},
		{"CIDR wrong port", l.AllowedIP(netip.MustParseAddr("10.1.2.3"), 81), false},
		{"IPv6", l.AllowedIP(netip.MustParseAddr("2001:db8:1::1"), 443), true},
		{"IPv6 with zone", l.AllowedIP(netip.MustParseAddr("2001:db8::1%eth0"), 443), false},
		{"Allowed IPv6 with zone", l.Allowed("2001:db8::1%eth0", 443), false},
		{"invalid address", l.AllowedIP(netip.Addr{}, 80), false},
		{"IP port 0", l.AllowedIP(netip.MustParseAddr("127.0.0.1"), 0), false},
		{"IP port 65536", l.AllowedIP(netip.MustParseAddr("127.0.0.1"), 65536), false},
		{"name port -1", l.AllowedName("localhost", -1), false},
		{"Allowed bracketed host", l.Allowed("[2001:db8::1]", 443), false},
		{"Allowed name", l.Allowed("LOCALHOST.", 22), true},
		{"Allowed address", l.Allowed("127.0.0.1", 22), true},
		{"Allowed malformed address", l.Allowed("127.0.0.256", 22), false},
		{"long name", l.AllowedName(strings.Repeat("a.", 130)+"zone", 443), false},
		{"long label", l.AllowedName(strings.Repeat("a", 64)+".zone", 443), false},
		{"non-ASCII name", l.AllowedName("\u212aa.zone", 443), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
}

func TestAllowedHostPortMalformed(t *testing.T) {
	lists := map[string]*allow.List{
		"nil":   nil,
		"empty": mustParse(t),
		"some":  mustParse(t, "localhost,*.zone,127.0.0.1,::/0,0.0.0.0/0"),
	}
	malformed := []string{
		"", "localhost", "localhost:", ":80", "localhost:0", "localhost:65536", "localhost:-1",
		"localhost:+80", "localhost:http", "::1:80", "[::1]", "[::1]80", "[::1]:", "[localhost]:80",
		"[127.0.0.1]:80", "[[::1]]:80", "::1]:80", "[::1:80", "a[b:80",
	}
	for name, l := range lists {
		for _, hp := range malformed {
			t.Run(name+"/"+hp, func(t *testing.T) {
				if l.AllowedHostPort(hp) {
					t.Errorf("AllowedHostPort(%q) = true, want false", hp)
				}
			})
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		pattern string
		reason  string // a part of the error message
	}{
		{"10.0.0.0/33", "invalid CIDR"},
		{"10.0.0.1/", "invalid CIDR"},
		{"/8", "invalid CIDR"},
		{"10.0.0.0/8/8", "invalid CIDR"},
		{"[::1]/129", "invalid CIDR"},
		{"a/b", "invalid CIDR"},
		{"localhost:0", "invalid port"},
		{"localhost:65536", "invalid port"},
		{"localhost:123456", "invalid port"},
		{"localhost:-1", "invalid port"},
		{"localhost:+80", "invalid port"},
		{"localhost:http", "invalid port"},
		{"localhost:", "empty port"},
		{"localhost:2000-1000", "start is above end"},
		{"localhost:1000-", "invalid port"},
		{"localhost:1-2-3", "invalid port"},
		{"localhost:80:90", "invalid IPv6 address"},
		{"1000::/16:", "empty port"},
		{"1000::/16:99999", "invalid port"},
		{"[::1]:", "empty port"},
		{"[::1]:0", "invalid port"},
		{":80", "empty host"},
		{"*", "use an empty allowlist"},
		{"*:80", "use an empty allowlist"},
		{"*.", "empty zone"},
		{"*.:80", "empty zone"},
		{"*..", "empty zone"},
		{"a.*.b", "'*'"},
		{"*a.b", "'*'"},
		{"**.b", "'*'"},
		{"a*", "'*'"},
		{"*.a.*", "'*'"},
		{"exa mple.com", "invalid character"},
		{"host!", "invalid character"},
		{"h\u00f4st", "invalid character"},
		{"\u212aube.example", "invalid character"},
		{"a..b", "empty label"},
		{".a", "empty label"},
		{"a...", "empty label"},
		{strings.Repeat("a", 64) + ".com", "longer than 63"},
		{strings.Repeat("a.", 127) + "com", "longer than 253"},
		{"foo.123", "numeric label"},
		{"*.10.0.0.1", "numeric label"},
		{"1.2.3", "invalid IP address"},
		{"10.0.0.256", "invalid IP address"},
		{"127.1", "invalid IP address"},
		{"2001:db8::zz", "invalid IPv6 address"},
		{"fe80::1%eth0", "zones"},
		{"[fe80::1%eth0]:80", "zones"},
		{"[localhost]", "brackets are only for IPv6"},
		{"[localhost]:80", "brackets are only for IPv6"},
		{"[127.0.0.1]", "brackets are only for IPv6"},
		{"[::1", "missing ']'"},
		{"::1]", "unbalanced brackets"},
		{"[::1]]", "unbalanced brackets"},
		{"[[::1]]", "unbalanced brackets"},
		{"local[host]", "unbalanced brackets"},
		{"[::1]x", "unexpected text after ']'"},
		{"[::1]80", "unexpected text after ']'"},
	}
	for _, tc := range tests {
		t.Run(tc.pattern, func(t *testing.T) {
			// Wrapped in a valid list, so that one bad pattern spoils it.
			l, err := allow.Parse([]string{"localhost", tc.pattern, "*.zone"})
			if err == nil {
				t.Fatalf("Parse(%q) = %q, want an error", tc.pattern, l)
			}
			if l != nil {
				t.Errorf("Parse(%q) returned a list with its error", tc.pattern)
			}
			want := fmt.Sprintf("allowlist pattern %q: ", tc.pattern)
			if msg := err.Error(); !strings.Contains(msg, want) || !strings.Contains(msg, tc.reason) {
				t.Errorf("Parse(%q) error %q, want it to contain %q and %q", tc.pattern, msg, want, tc.reason)
			}
		})
	}
}

func TestParseErrorMessage(t *testing.T) {
	_, err := allow.Parse([]string{"10.0.0.0/33"})
	if want := `allowlist pattern "10.0.0.0/33": invalid CIDR`; err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	// Every malformed pattern is reported, not only the first.
	_, err = allow.Parse([]string{"localhost:0,ok.example", "a..b"})
	if err == nil || !strings.Contains(err.Error(), `"localhost:0"`) || !strings.Contains(err.Error(), `"a..b"`) {
		t.Errorf("error %v, want both malformed patterns reported", err)
	}
}

func TestEmpty(t *testing.T) {
	var zero allow.List
	lists := map[string]*allow.List{
		"nil":            nil,
		"zero":           &zero,
		"no elements":    mustParse(t),
		"blank elements": mustParse(t, "", " , ,, ", "\t"),
	}
	for name, l := range lists {
		t.Run(name, func(t *testing.T) {
			if !l.Empty() {
				t.Error("Empty() = false, want true")
			}
			if s := l.String(); s != "" {
				t.Errorf("String() = %q, want \"\"", s)
			}
			for _, hp := range []string{"example.com:443", "10.1.2.3:80", "[2001:db8::1]:22", "a.b.c:65535"} {
				checkHostPort(t, l, hp, true)
			}
			if !l.AllowedName("example.com", 443) || !l.AllowedIP(netip.MustParseAddr("::1"), 443) {
				t.Error("AllowedName or AllowedIP denied on an empty list")
			}
		})
	}
	if l := mustParse(t, "localhost"); l.Empty() {
		t.Error("Empty() = true for a list with a pattern")
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{[]string{"localhost, *.zone:80", " ", "10.0.0.0/8,,"}, "localhost,*.zone:80,10.0.0.0/8"},
		{[]string{" LocalHost. "}, "localhost"},
		{[]string{"*.Zone.:1000-2000"}, "*.zone:1000-2000"},
		{[]string{"10.0.0.1/8:80"}, "10.0.0.0/8:80"},
		{[]string{"1.2.3.4/32"}, "1.2.3.4"},
		{[]string{"1000::/16:1000-2000"}, "1000::/16:1000-2000"},
		{[]string{"[2001:DB8::1]/64:80"}, "2001:db8::/64:80"},
		{[]string{"[2001:db8::1]"}, "2001:db8::1"},
		{[]string{"2001:db8::1"}, "2001:db8::1"},
		{[]string{"[2001:db8::1]:80-80"}, "[2001:db8::1]:80"},
		{[]string{"[2001:db8::1]:1000-2000"}, "[2001:db8::1]:1000-2000"},
		{[]string{"localhost:1-65535"}, "localhost"},
		{[]string{"localhost:080"}, "localhost:80"},
		{[]string{"::ffff:1.2.3.4"}, "1.2.3.4"},
		{[]string{"::ffff:10.0.0.0/104:80"}, "10.0.0.0/8:80"},
		{[]string{"a", "A,a.", "b", "a"}, "a,b"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.in, "|"), func(t *testing.T) {
			l := mustParse(t, tc.in...)
			if got := l.String(); got != tc.want {
				t.Fatalf("String() = %q, want %q", got, tc.want)
			}
			if again := mustParse(t, l.String()).String(); again != tc.want {
				t.Errorf("String() of the reparsed list = %q, want %q", again, tc.want)
			}
		})
	}
	if got, want := mustParse(t, patternForms...).String(), strings.Join([]string{
		"localhost", "localhost:80", "localhost:1000-2000",
		"*.zone", "*.zone:80", "*.zone:1000-2000",
		"127.0.0.1", "127.0.0.1:80", "127.0.0.1:1000-2000",
		"10.0.0.0/8", "10.0.0.0/8:80", "10.0.0.0/8:1000-2000",
		"1000::/16", "1000::/16:80", "1000::/16:1000-2000",
		"2001:db8::/64", "2001:db8::/64:80", "2001:db8::/64:1000-2000",
		"2001:db8::1", "[2001:db8::1]:80", "[2001:db8::1]:1000-2000",
	}, ","); got != want {
		t.Errorf("String() of every form = %q, want %q", got, want)
	}
}

func TestAllowedDoesNotAllocate(t *testing.T) {
	l := mustParse(t, patternForms...)
	tests := []struct {
		name string
		f    func() bool
		want bool
	}{
		{"name", func() bool { return l.Allowed("LocalHost.", 80) }, true},
		{"zone", func() bool { return l.Allowed("a.B.zone", 443) }, true},
		{"denied name", func() bool { return l.Allowed("www.example.com", 443) }, false},
		{"IPv4", func() bool { return l.Allowed("10.1.2.3", 80) }, true},
		{"IPv6", func() bool { return l.Allowed("2001:db8::1", 1500) }, true},
		{"denied IPv6", func() bool { return l.Allowed("2001:db9::1", 80) }, false},
		{"IPv6 with zone", func() bool { return l.Allowed("fe80::1%eth0", 80) }, false},
		{"hostport", func() bool { return l.AllowedHostPort("[2001:db8::1]:443") }, true},
		{"malformed hostport", func() bool { return l.AllowedHostPort("[::1]") }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.f(); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			if n := testing.AllocsPerRun(100, func() { tc.f() }); n != 0 {
				t.Errorf("%v allocations per call, want 0", n)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, p := range patternForms {
		f.Add(p, "localhost", 80)
	}
	for _, seed := range []struct {
		pattern, host string
		port          int
	}{
		{strings.Join(patternForms, ","), "a.zone", 1500},
		{"*.zone", "evilzone", 80},
		{"10.0.0.0/33", "10.0.0.1", 80},
		{"0.0.0.0/0,::/0", "::ffff:1.2.3.4", 443},
		{"::ffff:10.0.0.0/104:80", "[::ffff:10.1.2.3]:80", 80},
		{"*", "x", 1},
		{"*.", "", 0},
		{"a.*.b", "a.c.b", 80},
		{"[localhost]:80", "localhost", 80},
		{"[::1", "::1", 80},
		{"localhost:2000-1000", "localhost", 1500},
		{"fe80::1%eth0", "fe80::1%eth0", 80},
		{"foo.123", "127.1", 80},
	} {
		f.Add(seed.pattern, seed.host, seed.port)
	}
	f.Fuzz(func(t *testing.T, pattern, host string, port int) {
		l, err := allow.Parse([]string{pattern})
		if err != nil {
			if l != nil {
				t.Fatalf("Parse(%q) returned both a list and %v", pattern, err)
			}
			return
		}
		allowed := l.Allowed(host, port)
		l.AllowedHostPort(host)
		l.AllowedName(host, port)
		if addr, err := netip.ParseAddr(host); err == nil && !l.Empty() {
			if got := l.AllowedIP(addr, port); got != allowed {
				t.Errorf("Allowed(%q, %d) = %v but AllowedIP = %v", host, port, allowed, got)
			}
		}
		if host != "" && port >= 1 && port <= 65535 && !l.Empty() {
			hp := net.JoinHostPort(host, strconv.Itoa(port))
			if got := l.AllowedHostPort(hp); got != allowed {
				t.Errorf("Allowed(%q, %d) = %v but AllowedHostPort(%q) = %v", host, port, allowed, hp, got)
			}
		}

		// The normalised form parses back to an equivalent list.
		again, err := allow.Parse([]string{l.String()})
		if err != nil {
			t.Fatalf("Parse(%q) (String of %q): %v", l.String(), pattern, err)
		}
		if again.String() != l.String() {
			t.Errorf("String() %q reparses as %q", l.String(), again.String())
		}
		if got := again.Allowed(host, port); got != allowed {
			t.Errorf("Allowed(%q, %d) = %v for %q but %v for its String %q", host, port, allowed, pattern, got, l.String())
		}
	})
}

func BenchmarkAllowed(b *testing.B) {
	l := mustParse(b, append([]string{"*.example.com:443", "api.internal:8080", "192.168.0.0/16"}, patternForms...)...)
	benchmarks := []struct {
		name string
		host string
		port int
	}{
		{"name", "localhost", 80},
		{"zone", "a.b.zone", 1500},
		{"denied name", "www.example.org", 443},
		{"IPv4", "192.168.1.1", 22},
		{"IPv6", "2001:db8::1", 80},
		{"denied IPv4", "8.8.8.8", 53},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				l.Allowed(bm.host, bm.port)
			}
		})
	}
}

func ExampleParse() {
	l, err := allow.Parse([]string{"*.example.com:443,10.0.0.0/8", "[2001:db8::1]:22"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(l)
	fmt.Println(l.AllowedHostPort("api.EXAMPLE.com:443"))
	fmt.Println(l.AllowedHostPort("example.com.evil:443"))
	fmt.Println(l.Allowed("10.1.2.3", 5432))
	fmt.Println(l.Allowed("2001:db8::1", 80))

	_, err = allow.Parse([]string{"10.0.0.0/33"})
	fmt.Println(err)
	// Output:
	// *.example.com:443,10.0.0.0/8,[2001:db8::1]:22
	// true
	// false
	// true
	// false
	// allowlist pattern "10.0.0.0/33": invalid CIDR
}

func TestAllowedIPWithin(t *testing.T) {
	loop := netip.MustParsePrefix("127.0.0.0/8")
	meta := netip.MustParsePrefix("169.254.169.254/32")
	for _, tc := range []struct {
		patterns []string
		ip       string
		port     int
		within   netip.Prefix
		want     bool
	}{
		{[]string{"127.0.0.1:9090"}, "127.0.0.1", 9090, loop, true},
		{[]string{"127.0.0.1:9090"}, "::ffff:127.0.0.1", 9090, loop, true},
		{[]string{"127.0.0.1:9090"}, "127.0.0.1", 9091, loop, false},
		{[]string{"127.0.0.0/8"}, "127.0.0.5", 1, loop, true},
		{[]string{"127.0.0.0/16"}, "127.0.0.5", 1, loop, true},
		{[]string{"0.0.0.0/0"}, "127.0.0.1", 1, loop, false},
		{[]string{"::/0"}, "127.0.0.1", 1, loop, false},
		{[]string{"localhost"}, "127.0.0.1", 1, loop, false}, // name rules never count
		{[]string{"169.254.0.0/16"}, "169.254.169.254", 80, meta, false},
		{[]string{"169.254.169.254"}, "169.254.169.254", 80, meta, true},
		{nil, "127.0.0.1", 1, loop, false}, // an empty list names nothing
	} {
		l, err := allow.Parse(tc.patterns)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.AllowedIPWithin(netip.MustParseAddr(tc.ip), tc.port, tc.within); got != tc.want {
			t.Errorf("%q: AllowedIPWithin(%s, %d, %s) = %v, want %v", tc.patterns, tc.ip, tc.port, tc.within, got, tc.want)
		}
	}
}
