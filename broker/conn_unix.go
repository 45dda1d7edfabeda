//go:build unix

package broker

import (
	"errors"
	"net"
	"syscall"
)

// rawWriter is c's file descriptor for writeNow when c is a plain TCP
// connection, else nil: a TLS or WebSocket connection frames its bytes
// itself, and they always go through the writer goroutine.
func rawWriter(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// writeNow writes what the socket takes of p without waiting, and returns
// how much that was; 0 on any error, which the writer goroutine then meets
// and reports itself. Go keeps the descriptor non-blocking, and returning
// true tells RawConn.Write not to wait for it to become writable.
func writeNow(rc syscall.RawConn, p []byte) int {
	n := 0
	err := rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			w, err := syscall.Write(int(fd), p[n:])
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil || w <= 0 {
				break
			}
			n += w
		}
		return true
	})
	if err != nil {
		return 0
	}
	return n
}
