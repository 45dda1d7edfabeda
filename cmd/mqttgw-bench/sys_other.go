//go:build unix && !linux

package main

import (
	"errors"
	"syscall"
	"time"
)

// errNoProc is what the CPU and memory readers return where there is no
// Linux /proc: the tables then show "-" for those columns.
var errNoProc = errors.New("needs Linux /proc")

func childAttr() *syscall.SysProcAttr       { return nil }
func processCPU(int) (time.Duration, error) { return 0, errNoProc }
func processRSS(int) (uint64, error)        { return 0, errNoProc }
func selfCPU() (time.Duration, error)       { return 0, errNoProc }
func raiseFileLimit() (uint64, error)       { return 0, errNoProc }

func machineBusy() (time.Duration, error) { return 0, errNoProc }
