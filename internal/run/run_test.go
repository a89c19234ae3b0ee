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

// Outlast ends last's context only after body returned, and waits for it.
func TestOutlast(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var order []string
	bodyDone := make(chan struct{})
	errBody := errors.New("body")
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	err := Outlast(ctx,
		func(ctx context.Context) error {
			<-ctx.Done()
			select {
			case <-bodyDone:
				order = append(order, "last")
			default:
				t.Error("last's context ended before body returned")
			}
			return nil
		},
		func(ctx context.Context) error {
			<-ctx.Done()
			time.Sleep(20 * time.Millisecond) // draining
			order = append(order, "body")
			close(bodyDone)
			return errBody
		})
	if !errors.Is(err, errBody) {
		t.Errorf("Outlast = %v, want body's error", err)
	}
	if len(order) != 2 || order[0] != "body" || order[1] != "last" {
		t.Errorf("order %v, want [body last]", order)
	}
}
