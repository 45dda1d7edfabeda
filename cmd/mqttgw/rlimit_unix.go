//go:build unix

package main

import (
	"log/slog"
	"syscall"
)

// raiseFileLimit raises the soft limit of open files to the hard limit
// and logs both: every HTTP and MQTT connection takes a descriptor, and
// the common soft limit of 1024 is reached by a modest fleet (or on
// purpose, by idle connections). Go's runtime does the same on Linux
// since 1.19; doing it here makes it explicit on every Unix, and the log
// line says what the process got.
func raiseFileLimit(log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("reading the open-file limit failed", "error", err)
		return
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			log.Warn("raising the open-file limit failed", "soft", lim.Cur, "hard", lim.Max, "error", err)
			return
		}
		lim = raised
	}
	log.Info("open-file limit", "soft", lim.Cur, "hard", lim.Max)
}
