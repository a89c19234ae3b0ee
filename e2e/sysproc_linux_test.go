package e2e

import "syscall"

// childSysProcAttr makes children die with the test binary, so that a
// crashed or interrupted test run leaves no processes behind.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
