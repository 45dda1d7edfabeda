//go:build !unix

package broker

import (
	"net"
	"syscall"
)

// rawWriter has no direct path off Unix: every write goes through the
// writer goroutine.
func rawWriter(net.Conn) syscall.RawConn { return nil }

func writeNow(syscall.RawConn, []byte) int { return 0 }
