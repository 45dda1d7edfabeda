package api

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// guardBody bounds how long a client may take to send its request body,
// from the moment its headers are in, and makes sure every request gets
// its answer whatever the client does with the body.
//
// After a handler answers without reading the whole body (a bad topic, a
// 401, a 404, a 413, or the 408 when the body deadline passes), net/http
// reads up to 256 KiB of the rest before it writes the response, so that
// the connection can be reused, and a client that sends nothing more
// would wait for that answer for ever. Such answers close the connection
// instead (Connection: close): net/http then writes at once. HTTP/2
// streams don't share that fate, so only HTTP/1 answers are marked.
func (s *Server) guardBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		// The RPC handler lifts the deadline once it has the body, for
		// the wait for the reply. (Recorders in tests can't set one.)
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout))
		body := &trackedBody{ReadCloser: r.Body}
		r.Body = body
		if r.ProtoMajor == 1 {
			w = &closeIfUnread{ResponseWriter: w, body: body}
		}
		next.ServeHTTP(w, r)
	})
}

// trackedBody remembers whether the body was read to its end.
type trackedBody struct {
	io.ReadCloser
	eof bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

// closeIfUnread asks for the connection to be closed when the response
// starts before the body was read to its end, and ends the read of the
// body: after the response net/http still reads (and discards) up to
// 256 KiB of it before closing, which would hold a client that reads
// the response to EOF until the body deadline.
type closeIfUnread struct {
	http.ResponseWriter
	body        *trackedBody
	wroteHeader bool
}

func (w *closeIfUnread) WriteHeader(code int) {
	if !w.wroteHeader && code >= 200 {
		w.wroteHeader = true
		if !w.body.eof {
			w.Header().Set("Connection", "close")
			_ = http.NewResponseController(w.ResponseWriter).SetReadDeadline(time.Now())
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *closeIfUnread) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *closeIfUnread) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes flushes on; ResponseController finds it through Unwrap,
// but handlers that assert http.Flusher directly would not.
func (w *closeIfUnread) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush() // http.Flusher has no error to report
}
