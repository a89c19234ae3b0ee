package run

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A part that ignores the end of its context does not keep the process
// from exiting: Bounded gives up after the shutdown timeout.
func TestBoundedGivesUp(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stuck := make(chan struct{})
	defer close(stuck)
	done := make(chan error, 1)
	go func() {
		done <- Bounded(ctx, 200*time.Millisecond,
			func(ctx context.Context) error { <-ctx.Done(); return nil },
			func(context.Context) error { <-stuck; return nil },
		)
	}()
	cancel()
	select {
	case err := <-done:
		var te *TimeoutError
		if !errors.As(err, &te) || te.Timeout != 200*time.Millisecond {
			t.Fatalf("Bounded = %v, want a *TimeoutError for 200ms", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Bounded did not give up")
	}

	// Parts that stop in time: no error.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := Bounded(ctx, time.Second, func(ctx context.Context) error { <-ctx.Done(); return nil }); err != nil {
		t.Fatal(err)
	}
}
