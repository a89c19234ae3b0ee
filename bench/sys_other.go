//go:build !linux

package main

import "syscall"

func childSysProcAttr() *syscall.SysProcAttr { return nil }

func raiseNoFile(config) noFile { return noFile{Error: "not supported on this system"} }
