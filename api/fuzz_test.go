package api

// Fuzz targets for the HTTP⇄MQTT mapping: topics from the path, user
// properties from and to headers, the status a responder chooses, the
// timeout. Each checks properties of the result, not only that nothing
// panics. CI runs each one alone, e.g.
//
//	go test -run '^$' -fuzz '^FuzzDecodeTopic$' -fuzztime 10s ./api

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	"github.com/mqttgw/mqttgw/gateway"
)

// FuzzDecodeTopic: whatever escaped path a client sends, a topic that
// decodeTopic and CheckTopic both accept is one a broker takes as a topic
// name (MQTT's rules, and no '$' topic, which brokers keep for themselves),
// and it survives being escaped again and parsed back as the server parses
// it.
func FuzzDecodeTopic(f *testing.F) {
	for _, s := range []string{
		"svc/echo", "svc%2Fecho", "a//b", "a/", "/a", "/", "", "%2F", "%2f%2F",
		"svc/%2B/x", "svc/+", "svc/%23", "#", "a%00b", "a%01b", "a%7Fb", "a%C2%80b",
		"a%FFb", "a%EF%BF%BF", "a%EF%B7%90", "%EF%BF%BD", "%C0%AF", "%ED%A0%80",
		"$SYS/x", "%24SYS/x", "$share/g/x", "mqttgw/reply", "mqttgw/reply/x",
		"mqttgw/replyx", "mqttgw%2Freply%2Fx", "x/mqttgw/reply", "%zz", "%", "%4",
		"a%2", "%252B", "caf%C3%A9/%E2%82%AC", "😀/%F0%9F%98%80", "a b", "a%20b",
		"a;b,c?d", "..", "./..", "%2E%2E", "a\tb",
		// No 64 KiB seeds: the fuzzer would spend its time minimising
		// them. The length limit is CheckTopic's own test's business.
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		topic, err := decodeTopic(rpcPrefix+s, rpcPrefix)
		if err != nil {
			if !strings.Contains(err.Error(), "percent-encoded") {
				t.Fatalf("decodeTopic(%q): unexpected error %v", s, err)
			}
			return
		}
		// Decoded exactly once: %252B is the three characters "%2B".
		if want, err := url.PathUnescape(s); err != nil || want != topic {
			t.Fatalf("decodeTopic(%q) = %q, but one PathUnescape gives %q, %v", s, topic, want, err)
		}
		if err := gateway.CheckTopic(topic, gateway.DefaultResponsePrefix); err != nil {
			return
		}
		switch {
		case topic == "":
			t.Fatalf("%q: empty topic accepted", s)
		case len(topic) > 65535:
			t.Fatalf("%q: topic of %d bytes accepted", s, len(topic))
		case !utf8.ValidString(topic):
			t.Fatalf("%q: invalid UTF-8 topic %q accepted", s, topic)
		case strings.ContainsAny(topic, "+#\x00"):
			t.Fatalf("%q: topic %q with a wildcard or NUL accepted", s, topic)
		case topic[0] == '$':
			// Brokers refuse $SYS/... and $share/... as topic names, and
			// keep the rest of '$' for themselves.
			t.Fatalf("%q: topic %q with leading '$' accepted", s, topic)
		case topic == gateway.DefaultResponsePrefix || strings.HasPrefix(topic, gateway.DefaultResponsePrefix+"/"):
			t.Fatalf("%q: topic %q under the response prefix accepted", s, topic)
		}
		for _, r := range topic {
			if r < 0x20 || (r >= 0x7f && r <= 0x9f) || (r >= 0xFDD0 && r <= 0xFDEF) || r&0xFFFE == 0xFFFE {
				t.Fatalf("%q: topic %q with %U accepted", s, topic, r)
			}
		}

		// Round trip: escape each level, decode again.
		levels := strings.Split(topic, "/")
		for i, l := range levels {
			levels[i] = url.PathEscape(l)
		}
		escaped := strings.Join(levels, "/")
		again, err := decodeTopic(rpcPrefix+escaped, rpcPrefix)
		if err != nil || again != topic {
			t.Fatalf("topic %q escaped as %q decodes to %q, %v", topic, escaped, again, err)
		}
		// And through net/url, as the server sees the request line.
		u, err := url.Parse("http://gw" + rpcPrefix + escaped)
		if err != nil {
			t.Fatalf("topic %q escaped as %q is no URL: %v", topic, escaped, err)
		}
		if again, err := decodeTopic(u.EscapedPath(), rpcPrefix); err != nil || again != topic {
			t.Fatalf("topic %q: URL %q has escaped path %q, decoding to %q, %v", topic, u, u.EscapedPath(), again, err)
		}
	})
}

// FuzzUserProperties: Mqtt-User-Property headers become one property
// each, in order, split at the first '=', or the request is refused when
// and only when one of them has no '=' or an empty key.
func FuzzUserProperties(f *testing.F) {
	for _, seed := range [][2]string{
		{"trace=abc", "k=v"}, {"trace=abc=def", "a=="}, {"k=", "=v"}, {"novalue", "k=v"},
		{"", "k=v"}, {"=", "=="}, {"k=v", ""}, {"ключ=значение", "😀=🙂"},
		{"k=a\tb", "k=\xff"}, {"k=a\r\nInjected: yes", "k=\x00"}, {" k = v ", "k=v,w=x"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		values := []string{a, b, a}
		h := http.Header{}
		for _, v := range values {
			h.Add("mqtt-user-property", v) // canonicalised by Add
		}
		h.Set("Content-Type", "text/plain") // not a user property
		props, err := userProperties(h)

		valid := true
		for _, v := range values {
			if i := strings.IndexByte(v, '='); i <= 0 {
				valid = false
			}
		}
		if err != nil {
			if valid {
				t.Fatalf("userProperties(%q) refused well-formed headers: %v", values, err)
			}
			if !strings.Contains(err.Error(), "key=value") {
				t.Fatalf("userProperties(%q): error %q does not say what is expected", values, err)
			}
			return
		}
		if !valid {
			t.Fatalf("userProperties(%q) accepted a header without '=' or with an empty key: %q", values, props)
		}
		if len(props) != len(values) {
			t.Fatalf("userProperties(%q) = %d properties, want %d", values, len(props), len(values))
		}
		for i, p := range props {
			if p.Key+"="+p.Value != values[i] || p.Key == "" || strings.Contains(p.Key, "=") {
				t.Fatalf("header %q became property %q=%q", values[i], p.Key, p.Value)
			}
		}
	})
}

// FuzzReplyHeaders: whatever user properties and content type a responder
// sends, the HTTP response carries no header value that could split it,
// each Mqtt-User-Property header is one of the reply's properties (all
// that can be header values, in order), and the status is the one the
// responder chose, 200 without a choice, or 502 for a bad choice.
func FuzzReplyHeaders(f *testing.F) {
	for _, seed := range [][5]string{
		{"k", "v", "k2", "v2", "text/plain"},
		{"http-status", "201", "k", "v", "application/json"},
		{"http-status", "599", "http-status", "abc", ""},
		{"http-status", "502", "k", "v", "text/plain"}, // chosen, not a bad reply
		{"k", "v", "http-status", "200", "text/plain; charset=utf-8"},
		{"http-status", "abc", "k", "v", "text/plain"},
		{"http-status", "", "k", "v", ""},
		{"http-status", "99", "k", "v", ""},
		{"http-status", "600", "k", "v", ""},
		{"http-status", "2e2", "k", "v", ""},
		{"http-status", " 200", "k", "v", ""},
		{"http-status", "+201", "k", "v", ""},
		{"http-status", "0201", "k", "v", ""},
		{"http-status", "٢٠٠", "k", "v", ""},
		{"bad", "a\r\nInjected: yes", "ok", "1", "text/plain\r\nInjected: yes"},
		{"a\nb", "v", "k", "\x00", "text/html\x00"},
		{"k", "a\tb", "k", "\x7f", "\xff"},
		{"", "", "=", "=", " "},
		{"ключ", "значение", "k", "\xff\xfe", "text/plain; charset=\"ü\""},
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3], seed[4])
	}
	// One server for all inputs (a fuzz worker runs them one at a time):
	// building the router each time would be most of the work.
	var reply gateway.Reply
	s := NewServer(nil, &fakeGateway{RequestFn: func(context.Context, gateway.Request) (gateway.Reply, error) {
		return reply, nil
	}}, DefaultConfig())
	payload := []byte("payload")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, ct string) {
		props := []gateway.UserProperty{{Key: k1, Value: v1}, {Key: k2, Value: v2}}
		reply = gateway.Reply{Payload: payload, ContentType: ct, UserProperties: props}
		droppedBefore := s.DroppedProperties()
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/rpc/svc/x", nil))
		res := rec.Result()

		// The status, read independently of the code: a responder
		// chooses it with an http-status property of exactly three
		// ASCII digits from 200 to 599 (the first such property counts);
		// any other value is a bad reply, 502.
		wantStatus, badChoice := http.StatusOK, false
		for _, p := range props {
			if p.Key == statusProperty {
				if n, err := strconv.Atoi(p.Value); err == nil && len(p.Value) == 3 &&
					strings.Trim(p.Value, "0123456789") == "" && n >= 200 && n <= 599 {
					wantStatus = n
				} else {
					wantStatus, badChoice = http.StatusBadGateway, true
				}
				break
			}
		}
		if res.StatusCode != wantStatus {
			t.Fatalf("properties %q: status %d, want %d", props, res.StatusCode, wantStatus)
		}

		for name, vs := range res.Header {
			if !httpguts.ValidHeaderFieldName(name) {
				t.Fatalf("invalid header name %q", name)
			}
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n\x00") || !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("header %s: %q is no valid header value", name, v)
				}
			}
		}
		gotCT := res.Header.Get("Content-Type")
		if gotCT == "" || !httpguts.ValidHeaderFieldValue(gotCT) {
			t.Fatalf("Content-Type %q", gotCT)
		}
		got := res.Header.Values(headerUserProperty)

		if badChoice {
			if gotCT != "application/problem+json" || len(got) != 0 {
				t.Fatalf("502 with Content-Type %q and user properties %q", gotCT, got)
			}
			return
		}
		wantCT := ct
		if ct == "" || !httpguts.ValidHeaderFieldValue(ct) {
			wantCT = "application/octet-stream"
		}
		if gotCT != wantCT {
			t.Fatalf("content type %q sent as %q, want %q", ct, gotCT, wantCT)
		}
		var want []string
		for _, p := range props {
			if v := p.Key + "=" + p.Value; httpguts.ValidHeaderFieldValue(v) {
				want = append(want, v)
			}
		}
		if strings.Join(got, "\x00") != strings.Join(want, "\x00") || len(got) != len(want) {
			t.Fatalf("properties %q sent as headers %q, want %q", props, got, want)
		}
		for _, v := range got {
			found := false
			for _, p := range props {
				found = found || v == p.Key+"="+p.Value
			}
			if !found {
				t.Fatalf("header %s: %q is none of the reply's properties %q", headerUserProperty, v, props)
			}
		}
		if dropped := s.DroppedProperties() - droppedBefore; dropped != uint64(len(props)-len(want)) {
			t.Fatalf("properties %q: %d counted as dropped, want %d", props, dropped, len(props)-len(want))
		}
		if !bytes.Equal(rec.Body.Bytes(), payload) || res.Header.Get("Content-Length") != strconv.Itoa(len(payload)) {
			t.Fatalf("body %q, Content-Length %q", rec.Body.Bytes(), res.Header.Get("Content-Length"))
		}
	})
}

// FuzzParseTimeout: a ?timeout is refused, saying the range, or accepted
// as a duration from MinTimeout to the maximum; only canonical Go
// durations and plain decimal seconds are taken, each as it reads.
func FuzzParseTimeout(f *testing.F) {
	for _, s := range []string{
		"1.5s", "500ms", "2", "0.5", "60", "60s", "1m", "1m0s", "60.000000001", "61s", "1m1s",
		"0", "0s", "-1", "-1s", "", " ", "soon", "NaN", "nan", "Inf", "+Inf", "-Inf", "infinity",
		"1e300", "1e-300", "1e-10", "0.0000000001", "1ns", "0.1ns", "9999999h", "9223372036854775807",
		"9223372036854775808ns", "0x1p-2", "0x10", "1_0", "+5", "+5s", "05", ".5", "5.", "1e1",
		"1h", "-0", "-0s", "1µs", "1us", "2s ", " 2s", "2 s", "1s500ms", "1.5.5s", "1ms", "999us", "0.001",
	} {
		f.Add(s)
	}
	const def, limit = 10 * time.Second, 60 * time.Second
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseTimeout(url.Values{"timeout": {s}}, def, limit)
		if err != nil {
			// Whatever was wrong, the detail names the value and a limit.
			if msg := err.Error(); !strings.Contains(msg, strconv.Quote(s)) ||
				!strings.Contains(msg, limit.String()) && !strings.Contains(msg, MinTimeout.String()) {
				t.Fatalf("parseTimeout(%q): error %q does not quote the value and name the range", s, msg)
			}
		} else if d < MinTimeout || d > limit {
			t.Fatalf("parseTimeout(%q) = %s, outside [%s, %s]", s, d, MinTimeout, limit)
		}

		var want time.Duration
		switch {
		case isDecimal(s) && s[0] != '.' && s[len(s)-1] != '.':
			// Plain decimal seconds, to the nanosecond.
			secs, _ := strconv.ParseFloat(s, 64)
			if secs > limit.Seconds() {
				want = limit + 1
			} else {
				want = time.Duration(secs * float64(time.Second))
			}
		case isCanonicalDuration(s):
			gd, gerr := time.ParseDuration(s)
			if gerr != nil { // overflow
				gd = limit + 1
			}
			want = gd
		default:
			if err == nil {
				t.Fatalf("parseTimeout(%q) = %s; want a non-canonical value refused", s, d)
			}
			return
		}
		switch {
		case want < MinTimeout || want > limit:
			if err == nil {
				t.Fatalf("parseTimeout(%q) = %s; want it refused", s, d)
			}
		case err != nil:
			t.Fatalf("parseTimeout(%q): %v; want %s", s, err, want)
		case d != want:
			t.Fatalf("parseTimeout(%q) = %s, want %s", s, d, want)
		}
	})
}

// isCanonicalDuration reports whether s is what time.Duration.String
// could write, loosely: unsigned decimals each followed by a unit, with
// no '.' at either end of a number.
func isCanonicalDuration(s string) bool {
	if s == "" {
		return false
	}
	for s != "" {
		i := 0
		for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
			i++
		}
		num := s[:i]
		if !isDecimal(num) || num[0] == '.' || num[len(num)-1] == '.' {
			return false
		}
		s = s[i:]
		unit := ""
		for _, u := range []string{"ns", "us", "µs", "μs", "ms", "s", "m", "h"} {
			if strings.HasPrefix(s, u) && len(u) > len(unit) {
				unit = u
			}
		}
		if unit == "" {
			return false
		}
		s = s[len(unit):]
	}
	return true
}

// isDecimal reports whether s is digits with at most one '.', such as "2",
// "0.5" or ".5".
func isDecimal(s string) bool {
	digits := 0
	dot := false
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return digits > 0
}

// FuzzRequestHeaders: the headers async requests and streams read —
// Prefer, Accept and Idempotency-Key — never panic; what they accept is
// what they promise (an idempotency key of 1 to 255 printable ASCII
// characters, taken as sent, quotes aside), and what they refuse is a
// 400 invalid-header.
func FuzzRequestHeaders(f *testing.F) {
	for _, s := range []string{
		"respond-async", "respond-async, wait=10", "wait=5", "wait=\"5\"", "wait=", "wait", "wait=-1", "wait=+5",
		"wait=99999999999", "handling=lenient; foo=bar", "RESPOND-ASYNC", ",,,", ";", "=", "wait=5;x", `"abc"`, `"`, `""`,
		"text/event-stream", "application/x-ndjson;q=0", "text/event-stream, application/x-ndjson", "*/*", "text/*;q=0.5",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h := http.Header{"Prefer": {s}, "Accept": {s}, "Idempotency-Key": {s}}
		for _, err := range []error{
			func() error { _, err := parsePrefer(h); return err }(),
			func() error { _, err := replyMode(h); return err }(),
		} {
			var bad *badInput
			if err != nil && (!errors.As(err, &bad) || bad.kind != probInvalidHeader) {
				t.Fatalf("%q: %v is not an invalid-header problem", s, err)
			}
		}
		key, err := idempotencyKey(h)
		if err != nil {
			return
		}
		want := strings.TrimSpace(s)
		if len(want) >= 2 && want[0] == '"' && want[len(want)-1] == '"' {
			want = want[1 : len(want)-1]
		}
		if key != want || len(key) < 1 || len(key) > maxIdempotencyKey {
			t.Fatalf("idempotencyKey(%q) = %q", s, key)
		}
		for i := 0; i < len(key); i++ {
			if c := key[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
				t.Fatalf("idempotencyKey(%q) = %q, with %q", s, key, c)
			}
		}
	})
}
