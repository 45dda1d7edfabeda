package api

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// clientIP is the address of the client that sent r. X-Forwarded-For is
// believed only as far as it was written by --trusted-proxies: walking it
// from the right, the first address that is not a trusted proxy is the
// client. Anyone can send the header, so without trusted proxies it is
// ignored.
func (s *Server) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || !s.trusted(addr) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // a malformed entry: nothing left of it can be trusted
		}
		if !s.trusted(hop) {
			return hop.String()
		}
		addr = hop
	}
	return addr.String()
}

func (s *Server) trusted(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
