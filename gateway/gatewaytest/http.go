package gatewaytest

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Response is an HTTP response read whole.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Do sends req with c (nil: http.DefaultClient) and reads the whole
// response.
func Do(tb testing.TB, c *http.Client, req *http.Request) Response {
	tb.Helper()
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return Response{resp.StatusCode, resp.Header, b}
}

// Post posts body to url with the headers given as name, value pairs,
// and reads the whole response.
func Post(tb testing.TB, url string, body io.Reader, header ...string) Response {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, url, body)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return Do(tb, nil, req)
}

// ProblemTypeBase prefixes the slug of each of mqttgw's problem types.
const ProblemTypeBase = "urn:mqttgw:problem:"

// WantProblem checks one of mqttgw's RFC 9457 answers: its status, its
// type (ProblemTypeBase + slug), a title, and a detail that mentions
// detail.
func WantProblem(tb testing.TB, r Response, status int, slug, detail string) {
	tb.Helper()
	if r.Status != status {
		tb.Fatalf("status %d, want %d (body %s)", r.Status, status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		tb.Fatalf("Content-Type %q", ct)
	}
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	if err := json.Unmarshal(r.Body, &p); err != nil {
		tb.Fatalf("body %s: %v", r.Body, err)
	}
	if p.Type != ProblemTypeBase+slug || p.Status != status || p.Title == "" {
		tb.Fatalf("problem %+v, want type %s status %d", p, slug, status)
	}
	if !strings.Contains(p.Detail, detail) {
		tb.Fatalf("detail %q, want it to mention %q", p.Detail, detail)
	}
}
