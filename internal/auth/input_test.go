package auth

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadInput(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(file, []byte("from file"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxInput+1), 0o600); err != nil {
		t.Fatal(err)
	}

	if got, err := ReadInput(file, strings.NewReader("from stdin")); err != nil || string(got) != "from file" {
		t.Errorf("ReadInput(file) = %q, %v", got, err)
	}
	if got, err := ReadInput("-", strings.NewReader("from stdin")); err != nil || string(got) != "from stdin" {
		t.Errorf("ReadInput(-) = %q, %v", got, err)
	}
	if _, err := ReadInput(filepath.Join(dir, "missing"), nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadInput(missing) error %v, want fs.ErrNotExist", err)
	}
	if _, err := ReadInput("", nil); err == nil {
		t.Error("ReadInput(\"\") succeeded")
	}
	_, err := ReadInput(big, nil)
	wantErr(t, err, "larger than")
	_, err = ReadInput("-", bytes.NewReader(make([]byte, maxInput+1)))
	wantErr(t, err, "read stdin: larger than")
}

func TestWriteOutput(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name     string
		existing os.FileMode // 0: file does not exist yet
		mode     os.FileMode
	}{
		{"private key", 0, 0o600},
		{"public key", 0, 0o644},
		{"narrows an existing world-readable file", 0o644, 0o600},
		{"widens an existing private file", 0o600, 0o644},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(dir, "out"+string(rune('a'+i)))
			if tc.existing != 0 {
				if err := os.WriteFile(name, []byte("old content that is longer"), tc.existing); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(name, tc.existing); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteOutput(name, []byte("new"), tc.mode, nil); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(name)
			if err != nil || string(got) != "new" {
				t.Fatalf("file holds %q, %v; want \"new\"", got, err)
			}
			fi, err := os.Stat(name)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.mode {
				t.Errorf("mode %v, want %v", fi.Mode().Perm(), tc.mode)
			}
		})
	}

	var stdout bytes.Buffer
	if err := WriteOutput("-", []byte("to stdout"), 0o600, &stdout); err != nil || stdout.String() != "to stdout" {
		t.Errorf("WriteOutput(-) wrote %q, %v", stdout.String(), err)
	}
	if err := WriteOutput(filepath.Join(dir, "no", "such", "dir"), []byte("x"), 0o600, nil); err == nil {
		t.Error("WriteOutput into a missing directory succeeded")
	}
	if err := WriteOutput("", []byte("x"), 0o600, nil); err == nil {
		t.Error("WriteOutput(\"\") succeeded")
	}
}

func TestTokenSource(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Names starting with the letters of "file:" are what strings.TrimLeft
	// in the reference mangled: "file:fixtures.jwt" became "xtures.jwt".
	write("fixtures.jwt", "eyJ.fixtures.sig\n")
	write("xtures.jwt", "wrong file")
	write("elif.jwt", "  eyJ.elif.sig \r\n")
	write(":colon.jwt", "eyJ.colon.sig")
	write("sub/file:odd", "eyJ.sub.sig")
	write("-", "eyJ.dash.sig")
	write("empty.jwt", " \n\t\n")
	write(filepath.Join(dir, "abs.jwt"), "eyJ.abs.sig")

	tests := []struct {
		value, want, err string
	}{
		{value: "file:fixtures.jwt", want: "eyJ.fixtures.sig"},
		{value: "file:elif.jwt", want: "eyJ.elif.sig"},
		{value: "file::colon.jwt", want: "eyJ.colon.sig"},
		{value: "file:sub/file:odd", want: "eyJ.sub.sig"},
		{value: "file:./fixtures.jwt", want: "eyJ.fixtures.sig"},
		{value: "file:-", want: "eyJ.dash.sig"},
		{value: "file:" + filepath.Join(dir, "abs.jwt"), want: "eyJ.abs.sig"},
		{value: "eyJ.literal.sig", want: "eyJ.literal.sig"},
		{value: " eyJ.literal.sig\n", want: "eyJ.literal.sig"},
		{value: "fixtures.jwt", want: "fixtures.jwt"}, // no prefix: the token itself
		{value: "", err: "empty token"},
		{value: "  ", err: "empty token"},
		{value: "file:", err: "empty path"},
		{value: "file:empty.jwt", err: "token file empty.jwt is empty"},
		{value: "file:missing.jwt", err: "missing.jwt"},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			got, err := TokenSource(tc.value)
			if tc.err != "" {
				wantErr(t, err, tc.err)
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("TokenSource = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := TokenSource("file:missing.jwt"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: error %v, want fs.ErrNotExist", err)
	}
}
