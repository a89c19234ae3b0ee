package cli

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A part that ignores the end of its context does not keep the process
// from exiting: runAllBounded gives up after the shutdown timeout.
func TestRunAllBoundedGivesUp(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stuck := make(chan struct{})
	defer close(stuck)
	done := make(chan error, 1)
	go func() {
		done <- runAllBounded(ctx, 200*time.Millisecond,
			func(ctx context.Context) error { <-ctx.Done(); return nil },
			func(context.Context) error { <-stuck; return nil },
		)
	}()
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "--shutdown-timeout") {
			t.Fatalf("runAllBounded = %v, want an error naming --shutdown-timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("runAllBounded did not give up")
	}

	// Parts that stop in time: no error.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := runAllBounded(ctx, time.Second, func(ctx context.Context) error { <-ctx.Done(); return nil }); err != nil {
		t.Fatal(err)
	}
}
