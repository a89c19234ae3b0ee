package main

import "syscall"

// childSysProcAttr makes children die with rh-bench, so that a crashed or
// killed run leaves no processes behind.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// raiseNoFile raises RLIMIT_NOFILE to its hard limit; children inherit it.
func raiseNoFile(cfg config) noFile {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return noFile{Error: err.Error()}
	}
	nf := noFile{Soft: lim.Cur, Hard: lim.Max}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		nf.Error = err.Error()
	} else {
		nf.Soft = lim.Cur
	}
	nf.check(cfg)
	return nf
}
