// Package run runs the parts of a role together: each part is a function
// that serves until its context ends. The roles (proxy, lb, agent) use it
// so that each of their Run methods returns only once every part has.
package run

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// All runs parts until ctx ends or one of them returns; then it cancels the
// others and waits for all of them. It returns the first error.
func All(ctx context.Context, parts ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, part := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := part(ctx); err != nil {
				once.Do(func() { first = err })
			}
			cancel()
		}()
	}
	wg.Wait()
	return first
}

// Outlast runs last alongside body, and ends last's context only once
// body has returned, so that last sees everything body did (the audit
// log's writer writes the lines of the tunnels body closed at its end).
// Then it waits for last. It returns body's error, else last's.
func Outlast(ctx context.Context, last, body func(context.Context) error) error {
	lastCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	done := make(chan error, 1)
	go func() { done <- last(lastCtx) }()
	err := body(ctx)
	stop()
	if lerr := <-done; err == nil {
		err = lerr
	}
	return err
}

// TimeoutError is returned by Bounded when the parts did not stop in time.
type TimeoutError struct{ Timeout time.Duration }

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("shutdown did not finish within %s; exiting anyway", e.Timeout)
}

// Bounded is All, but once ctx has ended it waits at most timeout (and a
// second of grace) for the parts to return. Past that it returns a
// *TimeoutError, so the process exits even if a part is stuck; the stuck
// goroutines are left to the process's exit.
func Bounded(ctx context.Context, timeout time.Duration, parts ...func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- All(ctx, parts...) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(timeout + time.Second)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return &TimeoutError{timeout}
	}
}

// ListenError is a role's failure to bind one of its listeners; Part names
// which (e.g. "agents", "clients", "metrics").
type ListenError struct {
	Part string
	Err  error
}

func (e *ListenError) Error() string { return e.Part + ": " + e.Err.Error() }
func (e *ListenError) Unwrap() error { return e.Err }
