package main

import (
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseStatTicks(t *testing.T) {
	// utime (field 14) 1200, stime (field 15) 34; the command name holds
	// spaces and a ')'.
	line := "4242 (rh bench) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1200 34 0 0 20 0 9 0 123 4096 10 18446744073709551615\n"
	got, err := parseStatTicks(line)
	if err != nil || got != 1234 {
		t.Fatalf("parseStatTicks = %d, %v; want 1234", got, err)
	}
	for _, bad := range []string{
		"",
		"4242 rh-bench S 1 2 3", // no ')'
		"4242 (rh) S 1 4242 4242 0 -1 4194560 100",                               // too few fields
		"4242 (rh) S 1 4242 4242 0 -1 4194560 100 0 0 0 -5 34 0",                 // negative
		"4242 (rh) S 1 4242 4242 0 -1 4194560 100 0 0 0 12x 34 0",                // not a number
		"4242 (rh) S 1 4242 4242 0 -1 4194560 100 0 0 0 9223372036854775807 1 0", // overflows
	} {
		if v, err := parseStatTicks(bad); err == nil {
			t.Errorf("parseStatTicks(%q) = %d, want an error", bad, v)
		}
	}
}

func TestCPUTicksGrowsWithWork(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	t0, err := cpuTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Spin until the kernel has accounted at least two ticks (20ms).
	deadline := time.Now().Add(5 * time.Second)
	for {
		t1, err := cpuTicks(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if t1-t0 >= 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU ticks went from %d to %d in 5s of spinning", t0, t1)
		}
		for i := 0; i < 1_000_000; i++ {
			_ = i * i
		}
	}
}

const snmp = `Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 12345
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 100 2 0 250 7 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
UdpLite: 0 0 0 0 0 0
`

func TestParseUDPStat(t *testing.T) {
	for name, want := range map[string]int64{"OutDatagrams": 250, "RcvbufErrors": 7, "InDatagrams": 100} {
		got, err := parseUDPStat(snmp, name)
		if err != nil || got != want {
			t.Errorf("parseUDPStat(%s) = %d, %v; want %d", name, got, err, want)
		}
	}
	for _, c := range []struct{ data, name string }{
		{snmp, "NoSuchCounter"},
		{"", "OutDatagrams"},
		{"Udp: OutDatagrams\n", "OutDatagrams"},         // names without values
		{"Udp: OutDatagrams\nUdp: x\n", "OutDatagrams"}, // not a number
	} {
		if v, err := parseUDPStat(c.data, c.name); err == nil {
			t.Errorf("parseUDPStat(%q, %s) = %d, want an error", c.data, c.name, v)
		}
	}
}

func TestUDPSentCountsDatagrams(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	// Datagrams to a port nobody listens on are sent (OutDatagrams) but
	// never received (InDatagrams), so reading the wrong counter fails.
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.LocalAddr()
	ln.Close()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n0, err := udpSent()
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := c.WriteTo([]byte("x"), closed); err != nil {
			t.Fatal(err)
		}
	}
	n1, err := udpSent()
	if err != nil {
		t.Fatal(err)
	}
	// Other processes may send too; ours must be counted.
	if n1-n0 < 20 {
		t.Fatalf("OutDatagrams grew by %d after 20 sends", n1-n0)
	}
}

// The relay helper copies both ways and passes a half-close on, so a
// client that ends its writes still reads the whole answer.
func TestRelayToPassesBytesAndHalfClose(t *testing.T) {
	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echoLn.Close()
	go serveEcho(echoLn)
	relayLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer relayLn.Close()
	go relayTo(relayLn, echoLn.Addr().String())

	c, err := net.Dial("tcp", relayLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	go func() {
		io.WriteString(c, msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echoed %d bytes through the relay, want the %d sent", len(got), len(msg))
	}
}

func TestTargets(t *testing.T) {
	cfg := config{Only: phaseNames(), Tunnels: fullTunnels, Agents: fullAgents}
	rep := newReport(cfg)
	r := &runRecorder{rep: rep, phase: "x"}
	for _, v := range []float64{300, 320, 310} {
		r.add("quic.download", "raw", "MB/s", v)
	}
	for _, v := range []float64{270, 290, 280} { // median 280: 0.903x
		r.add("tunnel.download", "tunnel", "MB/s", v)
	}
	r.add("quic.upload", "raw", "MB/s", 300)
	r.add("tunnel.upload", "tunnel", "MB/s", 200) // 0.67x
	r.add("tunnels.echoed", "echoed", "count", 10000)
	r.add("tunnels.echoed", "echoed", "count", 9999) // one run lost one
	rep.finish()
	want := map[string]string{
		"1 tunnel download / raw QUIC 1 stream":         "PASS",
		"1 tunnel upload / raw QUIC 1 stream":           "MISS",
		"CPU per GiB: proxy+agent / raw QUIC both ends": "n/a",
		"10000 tunnels: all echo (fewest of any run)":   "MISS",
	}
	for _, tg := range rep.Targets {
		if w, ok := want[tg.Name]; ok {
			if tg.Result != w {
				t.Errorf("%s: %s, want %s", tg.Name, tg.Result, w)
			}
			delete(want, tg.Name)
		}
	}
	for name := range want {
		t.Errorf("target %q not reported", name)
	}

	// A target that needs a phase that did not run is left out.
	rep = newReport(config{Only: []string{"latency"}, Tunnels: fullTunnels, Agents: fullAgents})
	rep.finish()
	for _, tg := range rep.Targets {
		if !strings.Contains(tg.Name, "alternating") {
			t.Errorf("-only=latency reports %q (%s), which needs another phase", tg.Name, tg.Result)
		}
	}
	if len(rep.Targets) != 2 {
		t.Errorf("-only=latency reports %d targets, want the 2 alternating ratios", len(rep.Targets))
	}
}

func FuzzParseStatTicks(f *testing.F) {
	f.Add("4242 (rh bench) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1200 34 0 0 20 0 9 0 123 4096 10 1\n")
	f.Add("1 (a) S")
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := parseStatTicks(s); err == nil && v < 0 {
			t.Fatalf("parseStatTicks(%q) = %d", s, v)
		}
	})
}

func FuzzParseUDPStat(f *testing.F) {
	f.Add(snmp, "OutDatagrams")
	f.Add("Udp: a b\nUdp: 1\n", "b")
	f.Fuzz(func(t *testing.T, data, name string) {
		parseUDPStat(data, name) // must not panic
	})
}

func FuzzParseStatusBytes(f *testing.F) {
	f.Add("Name:\trh\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n", "VmRSS")
	f.Add("VmRSS:\n", "VmRSS")
	f.Fuzz(func(t *testing.T, data, key string) {
		if n, err := parseStatusBytes(data, key); err == nil && (n < 0 || n%1024 != 0) {
			t.Fatalf("parseStatusBytes(%q, %q) = %d", data, key, n)
		}
	})
}

func FuzzParseHostCPU(f *testing.F) {
	f.Add("cpu  10 0 5 100 2 0 1 0 0 0\ncpu0 5 0 2 50 1 0 0 0 0 0\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, data string) {
		if h := parseHostCPU(data); h.busy < 0 || h.busy > h.total {
			t.Fatalf("parseHostCPU(%q) = %+v", data, h)
		}
	})
}
