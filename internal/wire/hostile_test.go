package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// A peer that claims MaxAuthLen and sends a few bytes costs what it sent,
// not the claimed megabyte: a burst of such connections must not pin a
// MiB each until their auth timeout.
func TestReadMessageClaimedLengthNotAllocated(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxAuthLen)
	const calls = 16
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range calls {
		r := io.MultiReader(bytes.NewReader(hdr[:]), bytes.NewReader([]byte("4711")))
		if _, err := ReadMessage(r); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("truncated message: error %v, want io.ErrUnexpectedEOF", err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / calls; per > 16<<10 {
		t.Fatalf("4 bytes of a claimed %d-byte message allocate %d bytes per call", MaxAuthLen, per)
	}
	// A full message of the largest length is still read whole.
	big := bytes.Repeat([]byte("j"), MaxAuthLen)
	binary.BigEndian.PutUint32(hdr[:], MaxAuthLen)
	got, err := ReadMessage(io.MultiReader(bytes.NewReader(hdr[:]), bytes.NewReader(big)))
	if err != nil || len(got) != MaxAuthLen {
		t.Fatalf("full %d-byte message: %d bytes, %v", MaxAuthLen, len(got), err)
	}
}

// A destination's host is at most 255 bytes, and an error about a long
// destination (which a client's 400 and the logs repeat) stays short.
func TestSplitHostPortLongHost(t *testing.T) {
	ok := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	if _, _, err := SplitHostPort(ok + ":443"); err != nil {
		t.Fatalf("a 253-byte name: %v", err)
	}
	for _, hostport := range []string{
		strings.Repeat("a", 256) + ":443",
		strings.Repeat("a", 60<<10) + ":443",
		"a:" + strings.Repeat("9", 60<<10),
		strings.Repeat("a", 60<<10),
		strings.Repeat("\r\n", 1000) + ":80",
	} {
		_, _, err := SplitHostPort(hostport)
		if err == nil {
			t.Fatalf("%d-byte destination accepted", len(hostport))
		}
		if len(err.Error()) > 200 || strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("%d-byte destination: error of %d bytes: %.300q", len(hostport), len(err.Error()), err)
		}
	}
}
