package auth

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxInput bounds what ReadInput reads; keys and tokens are a few KiB.
const maxInput = 1 << 20

// ReadInput reads the file name, or stdin when name is "-". Input larger
// than 1 MiB is refused.
func ReadInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "" {
		return nil, errors.New("no input file given")
	}
	if name != "-" {
		return readFile(name)
	}
	return readAll(stdin, "stdin")
}

func readFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(f, name)
}

func readAll(r io.Reader, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if len(data) > maxInput {
		return nil, fmt.Errorf("read %s: larger than %d bytes", what, maxInput)
	}
	return data, nil
}

// WriteOutput writes data to the file name, or to stdout when name is "-".
// A file is created or truncated and gets mode (0600 for private keys and
// tokens, 0644 for public keys) even if it existed with another mode; the
// mode is set before any data is written.
func WriteOutput(name string, data []byte, mode os.FileMode, stdout io.Writer) error {
	if name == "" {
		return errors.New("no output file given")
	}
	if name == "-" {
		if _, err := stdout.Write(data); err != nil {
			return fmt.Errorf("write stdout: %w", err)
		}
		return nil
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	// The mode passed to OpenFile is cut by the umask and ignored for an
	// existing file; set it exactly, but only on regular files (not on
	// /dev/stdout or a named pipe).
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() != mode.Perm() {
		if err := f.Chmod(mode.Perm()); err != nil {
			f.Close()
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// TokenSource resolves the agent's token setting: "file:PATH" reads the file
// PATH (taken exactly as written, relative to the working directory; "-" is
// a file named "-", not stdin) and
// trims surrounding whitespace; anything else is the token itself, also
// trimmed. An empty result is an error.
func TokenSource(value string) (string, error) {
	path, isFile := strings.CutPrefix(value, "file:")
	if !isFile {
		token := strings.TrimSpace(value)
		if token == "" {
			return "", errors.New("empty token")
		}
		return token, nil
	}
	if path == "" {
		return "", errors.New(`empty path after "file:"`)
	}
	data, err := readFile(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return token, nil
}
