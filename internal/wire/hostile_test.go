package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
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
