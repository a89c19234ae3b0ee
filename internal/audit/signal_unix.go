//go:build unix

package audit

import (
	"os"
	"syscall"
)

// reopenSignals make Run reopen the file.
var reopenSignals = []os.Signal{syscall.SIGUSR1}
