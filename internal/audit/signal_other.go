//go:build !unix

package audit

import "os"

// reopenSignals: there is no SIGUSR1 here; call Reopen instead.
var reopenSignals []os.Signal
