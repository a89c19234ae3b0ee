//go:build unix

package reload_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/reload"
)

// Watch reloads on SIGHUP sent to this process, and returns when its
// context ends.
func TestWatchSIGHUP(t *testing.T) {
	// Until Watch subscribes, a SIGHUP would end the test binary.
	guard := make(chan os.Signal, 16)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)

	ctx, cancel := context.WithCancel(context.Background())
	loaded := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- reload.Watch(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)),
			func() (*reload.Update, error) { return &reload.Update{}, nil },
			func(*reload.Update) {
				select {
				case loaded <- struct{}{}:
				default:
				}
			})
	}()
	// Watch subscribes in its goroutine: signal until it reloads.
	deadline := time.After(10 * time.Second)
	for answered := false; !answered; {
		if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		select {
		case <-loaded:
			answered = true
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("no reload on SIGHUP")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
