package api

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// Test keys and their hashes.
const (
	authKeyOps     = "ops-secret-0123456789abcdef"
	authKeyService = "service-secret-fedcba9876543210"
)

var (
	authHashOps     = HashKey(authKeyOps)
	authHashService = HashKey(authKeyService)
)

func TestHashKey(t *testing.T) {
	// The example of the auth file's documentation: SHA-256("password").
	if got, want := HashKey("password"), "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"; got != want {
		t.Errorf("HashKey(password) = %s, want %s", got, want)
	}
}

// authYAML is a valid auth file with two keys.
func authYAML() string {
	return fmt.Sprintf(`keys:
  - name: ops-dashboard
    sha256: %s   # a comment
    topics: ["devices/+/reboot", "service/#"]
  - name: svc
    sha256: %s
    topics:
      - a/+
      - b/#
      - exact/topic
`, authHashOps, strings.ToUpper(authHashService))
}

func mustParseKeys(t testing.TB, data string) *KeySet {
	t.Helper()
	ks, err := ParseKeys([]byte(data))
	if err != nil {
		t.Fatalf("ParseKeys: %v\n%s", err, data)
	}
	return ks
}

func TestParseKeysValid(t *testing.T) {
	ks := mustParseKeys(t, authYAML())
	if ks.Len() != 2 || !ks.Allowed("ops-dashboard", "service/x") || !ks.Allowed("svc", "exact/topic") {
		t.Fatalf("%d keys, or not the two of the file", ks.Len())
	}
	if got := hex.EncodeToString(ks.keys[1].hash[:]); got != authHashService {
		t.Errorf("upper-case hash decoded to %s, want %s", got, authHashService)
	}

	// Hashes that YAML would read as numbers are still strings.
	numeric := strings.Repeat("1", 60) + "e123"
	ks = mustParseKeys(t, "keys:\n  - {name: n, sha256: "+numeric+", topics: [x]}\n")
	if got := hex.EncodeToString(ks.keys[0].hash[:]); got != numeric {
		t.Errorf("numeric-looking hash decoded to %s", got)
	}

	// An explicit empty list is valid and denies everything.
	ks = mustParseKeys(t, "keys: []\n")
	if ks.Len() != 0 {
		t.Fatalf("keys: [] gave %d keys", ks.Len())
	}
	r := httptest.NewRequest(http.MethodPost, "/rpc/x", nil)
	r.Header.Set("X-API-Key", authKeyOps)
	if _, err := ks.Check(r, "x"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("empty key set: Check = %v, want ErrUnauthorized", err)
	}
}

func TestParseKeysRejects(t *testing.T) {
	h1, h2 := authHashOps, authHashService
	entry := func(name, hash, topics string) string {
		return fmt.Sprintf("  - name: %s\n    sha256: %s\n    topics: %s\n", name, hash, topics)
	}
	valid := entry("first", h1, `["a/b"]`)
	for _, c := range []struct {
		name, yaml string
		want       []string // substrings of the error
	}{
		{"empty file", "", []string{"empty"}},
		{"only a comment", "# nothing\n", []string{`"keys" list`}},
		{"no keys list", "other: 1\n", []string{"other"}},
		{"keys null", "keys: ~\n", []string{`no "keys"`}},
		{"not yaml", "keys: [\n", []string{`"keys" list`}},
		{"keys not a list", "keys: {name: x}\n", []string{`"keys" must be a list`}},
		{"unknown top-level field", "keys: []\nextra: 1\n", []string{"extra"}},
		{"unknown key field", "keys:\n" + valid + entry("k", h2, `["a"]`) + "    admin: true\n", []string{`key 2 ("k")`, "admin"}},
		{"typo in field", "keys:\n  - name: k\n    sha265: " + h1 + "\n    topics: [a]\n", []string{`key 1 ("k")`, "sha265"}},
		{"duplicate field", "keys:\n  - name: k\n    name: j\n    sha256: " + h1 + "\n    topics: [a]\n", []string{"name"}},
		{"entry not a mapping", "keys:\n" + valid + "  - just-a-string\n", []string{"key 2"}},
		{"wrong type in entry", "keys:\n  - {name: k, sha256: " + h1 + ", topics: {a: b}}\n", []string{`key 1 ("k")`}},
		{"two documents", "keys: []\n---\nkeys: []\n", []string{`"keys" list`}},
		{"topics a string", "keys:\n" + entry("k", h1, "a/b"), []string{`key 1 ("k")`, "[]string"}},
		{"empty name", "keys:\n" + valid + entry(`""`, h2, `["a"]`), []string{"key 2", "name is empty"}},
		{"missing name", "keys:\n  - sha256: " + h1 + "\n    topics: [a]\n", []string{"key 1", "name is empty"}},
		{"blank name", "keys:\n" + entry(`"  "`, h1, `["a"]`), []string{"key 1", "name is empty"}},
		{"control character in name", "keys:\n" + entry(`"a\tb"`, h1, `["a"]`), []string{"key 1", "control character"}},
		{"duplicate name", "keys:\n" + valid + entry("first", h2, `["a"]`), []string{`line 5: key 2 ("first")`, `name already used by line 2: key 1 ("first")`}},
		{"duplicate hash", "keys:\n" + valid + entry("second", h1, `["a"]`), []string{`line 5: key 2 ("second")`, `same sha256 as line 2: key 1 ("first")`}},
		{"duplicate hash, other case", "keys:\n" + valid + entry("second", strings.ToUpper(h1), `["a"]`), []string{`key 2 ("second")`, "same sha256"}},
		{"missing hash", "keys:\n  - name: k\n    topics: [a]\n", []string{`key 1 ("k")`, "sha256 has 0 characters"}},
		{"short hash", "keys:\n" + entry("k", h1[:63], `["a"]`), []string{`key 1 ("k")`, "sha256 has 63 characters"}},
		{"long hash", "keys:\n" + entry("k", h1+"0", `["a"]`), []string{`key 1 ("k")`, "sha256 has 65 characters"}},
		{"non-hex hash", "keys:\n" + entry("k", "g"+h1[1:], `["a"]`), []string{`key 1 ("k")`, "not 64 hex digits"}},
		{"the key itself instead of its hash", "keys:\n" + entry("k", authKeyOps, `["a"]`), []string{`key 1 ("k")`, "not the key itself"}},
		{"no topics", "keys:\n  - name: k\n    sha256: " + h1 + "\n", []string{`key 1 ("k")`, "topics is empty"}},
		{"empty topics", "keys:\n" + entry("k", h1, `[]`), []string{`key 1 ("k")`, "topics is empty"}},
		{"empty filter", "keys:\n" + entry("k", h1, `[""]`), []string{`key 1 ("k")`, `topic filter ""`}},
		{"# not last", "keys:\n" + entry("k", h1, `["a/#/b"]`), []string{`key 1 ("k")`, `"a/#/b"`, `has "#" before its last level`}},
		{"# not a whole level", "keys:\n" + entry("k", h1, `["a/b#"]`), []string{`"a/b#"`, "whole level"}},
		{"+ not a whole level", "keys:\n" + entry("k", h1, `["a/b+/c"]`), []string{`"a/b+/c"`, "whole level"}},
		{"$share filter", "keys:\n" + entry("k", h1, `["$share/g/a/b"]`), []string{`"$share/g/a/b"`, "shared subscription"}},
		{"$SHARE filter", "keys:\n" + entry("k", h1, `["$SHARE/g/#"]`), []string{"shared subscription"}},
		{"bare $share", "keys:\n" + entry("k", h1, `["$share/g"]`), []string{`"$share/g"`}},
		{"$SYS filter", "keys:\n" + entry("k", h1, `["$SYS/#"]`), []string{`"$SYS/#"`, "'$'"}},
		{"NUL in filter", "keys:\n" + entry("k", h1, `["a\0b"]`), []string{"NUL"}},
		{"second filter bad", "keys:\n" + valid + entry("k2", h2, `["ok/+", "bad/#/x"]`), []string{`key 2 ("k2")`, `"bad/#/x"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ks, err := ParseKeys([]byte(c.yaml))
			if err == nil {
				t.Fatalf("ParseKeys accepted %q: %d keys", c.yaml, ks.Len())
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), authKeyOps) {
				t.Errorf("error %q contains a key", err)
			}
		})
	}
}

func TestKeySetAllowed(t *testing.T) {
	for _, c := range []struct {
		filter string
		yes    []string
		no     []string
	}{
		{"a/+", []string{"a/b", "a/"}, []string{"a", "a/b/c", "b/a", "x/a/b"}},
		{"a/#", []string{"a", "a/b", "a/b/c", "a/"}, []string{"ab", "b/a", "b"}},
		{"#", []string{"a", "a/b/c", "/", "x//y"}, []string{"$SYS/x", "$a", "$"}},
		{"+", []string{"a", "b"}, []string{"a/b", "$a"}},
		{"+/x", []string{"a/x", "/x"}, []string{"$a/x", "a/y", "a/x/y"}},
		{"devices/+/reboot", []string{"devices/42/reboot"}, []string{"devices/42/43/reboot", "devices/reboot", "devices/42/reboot/x"}},
		{"exact/topic", []string{"exact/topic"}, []string{"exact/topic/", "exact", "Exact/topic", "exact/+"}},
		// "#" includes the parent level [MQTT-4.7.1-2], also after "+".
		{"a/+/#", []string{"a/b", "a/b/c", "a/b/c/d", "a/"}, []string{"a", "b/c"}},
		{"+/#", []string{"a", "a/b", "/"}, []string{"$a", "$a/b"}},
		{"/#", []string{"/", "/a", "//"}, []string{"a", "a/"}},
		{"a//b", []string{"a//b"}, []string{"a/b"}},
	} {
		yaml := fmt.Sprintf("keys:\n  - {name: k, sha256: %s, topics: [%q]}\n  - {name: other, sha256: %s, topics: [\"a/b/c/d\", \"zzz/#\"]}\n",
			authHashOps, c.filter, authHashService)
		ks := mustParseKeys(t, yaml)
		for _, topic := range c.yes {
			if !ks.Allowed("k", topic) {
				t.Errorf("filter %q does not match topic %q", c.filter, topic)
			}
		}
		for _, topic := range c.no {
			if ks.Allowed("k", topic) {
				t.Errorf("filter %q matches topic %q", c.filter, topic)
			}
		}
		for _, topic := range c.yes {
			if ks.Allowed("nobody", topic) {
				t.Errorf("an unknown key name is allowed %q", topic)
			}
		}
		if ks.Allowed("k", "") {
			t.Errorf("filter %q matches the empty topic", c.filter)
		}
	}
}

// authRequest builds a POST /rpc/topic with headers given as name, value pairs.
func authRequest(topic string, hdr ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/rpc/"+topic, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

func TestKeySetAllowedPerKey(t *testing.T) {
	ks := mustParseKeys(t, authYAML())
	for _, c := range []struct {
		key, topic string
		want       bool
	}{
		{"ops-dashboard", "devices/1/reboot", true},
		{"ops-dashboard", "service/a", true},
		{"ops-dashboard", "a/1", false}, // svc's
		{"svc", "a/1", true},
		{"svc", "devices/1/reboot", false}, // ops-dashboard's
		{"svc", "service/a", false},
		{"nobody", "a/1", false},
		{"", "a/1", false},
	} {
		if got := ks.Allowed(c.key, c.topic); got != c.want {
			t.Errorf("Allowed(%q, %q) = %v, want %v", c.key, c.topic, got, c.want)
		}
	}
}

func TestKeySetCheck(t *testing.T) {
	ks := mustParseKeys(t, authYAML())
	for _, c := range []struct {
		name    string
		topic   string
		hdr     []string
		want    error  // nil, ErrUnauthorized or ErrForbidden
		key     string // key name returned
		details []string
	}{
		{name: "bearer", topic: "devices/7/reboot", hdr: []string{"Authorization", "Bearer " + authKeyOps}, key: "ops-dashboard"},
		{name: "bearer lower-case scheme", topic: "service/x/y", hdr: []string{"Authorization", "bearer " + authKeyOps}, key: "ops-dashboard"},
		{name: "bearer extra spaces", topic: "service", hdr: []string{"Authorization", "Bearer   " + authKeyOps + " "}, key: "ops-dashboard"},
		{name: "x-api-key", topic: "a/1", hdr: []string{"X-API-Key", authKeyService}, key: "svc"},
		{name: "x-api-key other case", topic: "exact/topic", hdr: []string{"x-api-key", authKeyService}, key: "svc"},
		{name: "both agree", topic: "b", hdr: []string{"Authorization", "Bearer " + authKeyService, "X-API-Key", authKeyService}, key: "svc"},
		{name: "basic auth for a proxy, key in x-api-key", topic: "b/c", hdr: []string{"Authorization", "Basic dXNlcjpwdw==", "X-API-Key", authKeyService}, key: "svc"},

		{name: "missing", topic: "a/1", want: ErrUnauthorized, details: []string{"missing API key", "Bearer", "X-API-Key"}},
		{name: "wrong key bearer", topic: "a/1", hdr: []string{"Authorization", "Bearer wrong-" + authKeyOps}, want: ErrUnauthorized, details: []string{"unknown API key"}},
		{name: "wrong key header", topic: "a/1", hdr: []string{"X-API-Key", authKeyOps + "x"}, want: ErrUnauthorized, details: []string{"unknown API key"}},
		{name: "hash instead of key", topic: "a/1", hdr: []string{"X-API-Key", authHashOps}, want: ErrUnauthorized, details: []string{"unknown API key"}},
		{name: "empty bearer", topic: "a/1", hdr: []string{"Authorization", "Bearer "}, want: ErrUnauthorized, details: []string{"empty Bearer token"}},
		{name: "bare bearer", topic: "a/1", hdr: []string{"Authorization", "Bearer"}, want: ErrUnauthorized, details: []string{"empty Bearer token"}},
		{name: "empty x-api-key", topic: "a/1", hdr: []string{"X-API-Key", ""}, want: ErrUnauthorized, details: []string{"empty X-API-Key"}},
		{name: "key without scheme", topic: "a/1", hdr: []string{"Authorization", authKeyOps}, want: ErrUnauthorized, details: []string{`not "Bearer <key>"`}},
		{name: "basic only", topic: "a/1", hdr: []string{"Authorization", "Basic " + authKeyOps}, want: ErrUnauthorized, details: []string{`not "Bearer <key>"`}},
		{name: "both disagree", topic: "a/1", hdr: []string{"Authorization", "Bearer " + authKeyOps, "X-API-Key", authKeyService}, want: ErrUnauthorized, details: []string{"different keys"}},
		{name: "two authorization headers", topic: "a/1", hdr: []string{"Authorization", "Bearer " + authKeyService, "Authorization", "Bearer " + authKeyService}, want: ErrUnauthorized, details: []string{"more than one Authorization"}},
		{name: "two x-api-key headers", topic: "a/1", hdr: []string{"X-API-Key", authKeyService, "X-API-Key", authKeyOps}, want: ErrUnauthorized, details: []string{"more than one X-API-Key"}},

		{name: "forbidden topic", topic: "a/1/2", hdr: []string{"X-API-Key", authKeyService}, want: ErrForbidden, key: "svc", details: []string{`"svc"`, `"a/1/2"`}},
		{name: "other key's topic", topic: "service/x", hdr: []string{"X-API-Key", authKeyService}, want: ErrForbidden, key: "svc", details: []string{`"svc"`, `"service/x"`}},
		{name: "forbidden, bearer", topic: "devices/7/shutdown", hdr: []string{"Authorization", "Bearer " + authKeyOps}, want: ErrForbidden, key: "ops-dashboard", details: []string{`"ops-dashboard"`, `"devices/7/shutdown"`}},
		{name: "forbidden empty topic", topic: "", hdr: []string{"X-API-Key", authKeyService}, want: ErrForbidden, key: "svc"},
	} {
		t.Run(c.name, func(t *testing.T) {
			name, err := ks.Check(authRequest(c.topic, c.hdr...), c.topic)
			if name != c.key {
				t.Errorf("key name %q, want %q", name, c.key)
			}
			if c.want == nil {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("Check = %v, want %v", err, c.want)
			}
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Err != c.want || !strings.HasPrefix(err.Error(), c.want.Error()+": ") {
				t.Fatalf("Check = %#v, want an *AuthError wrapping %v", err, c.want)
			}
			if c.want == ErrForbidden && ae.KeyName != c.key {
				t.Errorf("AuthError.KeyName = %q, want %q", ae.KeyName, c.key)
			}
			for _, d := range c.details {
				if !strings.Contains(ae.Detail, d) {
					t.Errorf("detail %q does not contain %q", ae.Detail, d)
				}
			}
			for _, secret := range []string{authKeyOps, authKeyService, "wrong-"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q echoes the key", err)
				}
			}
		})
	}
}

func TestNewAuthenticator(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewAuthenticator(filepath.Join(dir, "missing.yaml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	gatewaytest.WriteFile(t, bad, "keys:\n  - name: x\n")
	if _, err := NewAuthenticator(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), `key 1 ("x")`) {
		t.Errorf("invalid file: err = %v", err)
	}
	good := filepath.Join(dir, "auth.yaml")
	gatewaytest.WriteFile(t, good, authYAML())
	a, err := NewAuthenticator(good)
	if err != nil {
		t.Fatal(err)
	}
	if a.Keys().Len() != 2 {
		t.Errorf("%d keys", a.Keys().Len())
	}
	if name, err := a.Check(authRequest("a/b", "X-API-Key", authKeyService), "a/b"); err != nil || name != "svc" {
		t.Errorf("Check = %q, %v", name, err)
	}
}

func TestAuthenticatorReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth.yaml")
	gatewaytest.WriteFile(t, path, authYAML())
	a, err := NewAuthenticator(path)
	if err != nil {
		t.Fatal(err)
	}
	check := func(key, topic string) (string, error) {
		return a.Check(authRequest(topic, "Authorization", "Bearer "+key), topic)
	}

	// Success: svc is revoked, ops loses service/# and gains new/topic.
	const newKey = "brand-new-secret-key-0000000000"
	gatewaytest.WriteFile(t, path, fmt.Sprintf("keys:\n  - {name: ops-dashboard, sha256: %s, topics: [new/topic]}\n  - {name: fresh, sha256: %s, topics: [\"#\"]}\n",
		authHashOps, HashKey(newKey)))
	if err := a.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if _, err := check(authKeyService, "a/b"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("revoked key: %v", err)
	}
	if _, err := check(authKeyOps, "service/x"); !errors.Is(err, ErrForbidden) {
		t.Errorf("removed filter: %v", err)
	}
	if name, err := check(authKeyOps, "new/topic"); err != nil || name != "ops-dashboard" {
		t.Errorf("added filter: %q, %v", name, err)
	}
	if name, err := check(newKey, "any/thing"); err != nil || name != "fresh" {
		t.Errorf("added key: %q, %v", name, err)
	}
	before := a.Keys()

	// Failures keep the old keys.
	for _, c := range []struct {
		name  string
		write func()
		want  string
	}{
		{"invalid yaml", func() { gatewaytest.WriteFile(t, path, "keys: [\n") }, path},
		{"invalid entry", func() { gatewaytest.WriteFile(t, path, "keys:\n  - {name: x, sha256: abc, topics: [a]}\n") }, `key 1 ("x")`},
		{"empty file", func() { gatewaytest.WriteFile(t, path, "") }, "empty"},
		{"file removed", func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, "reading auth file"},
	} {
		c.write()
		err := a.Reload()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Reload = %v, want an error containing %q", c.name, err, c.want)
		}
		if a.Keys() != before {
			t.Errorf("%s: failed Reload replaced the keys", c.name)
		}
		if name, err := check(newKey, "any/thing"); err != nil || name != "fresh" {
			t.Errorf("%s: after failed Reload: %q, %v", c.name, name, err)
		}
		if _, err := check(authKeyService, "a/b"); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: after failed Reload the revoked key is back: %v", c.name, err)
		}
	}
}

// TestAuthenticatorConcurrentReload runs Check while the file flips
// between two key sets; under -race it proves the swap is safe, and every
// Check must see one whole set: key A works iff its topic is the one that
// set gives it.
func TestAuthenticatorConcurrentReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth.yaml")
	setA := fmt.Sprintf("keys:\n  - {name: a, sha256: %s, topics: [one/#]}\n", authHashOps)
	setB := fmt.Sprintf("keys:\n  - {name: a, sha256: %s, topics: [two/#]}\n  - {name: b, sha256: %s, topics: [one/#]}\n", authHashOps, authHashService)
	gatewaytest.WriteFile(t, path, setA)
	a, err := NewAuthenticator(path)
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load() || n < 100; n++ {
				// Set A: key a may publish to one/x, key b is unknown.
				// Set B: key a may not (403), key b may. Any other outcome
				// means a Check saw a torn or missing set.
				_, errA := a.Check(authRequest("one/x", "X-API-Key", authKeyOps), "one/x")
				_, errB := a.Check(authRequest("one/x", "X-API-Key", authKeyService), "one/x")
				switch {
				case errA != nil && !errors.Is(errA, ErrForbidden):
					errs <- fmt.Errorf("key a: %v", errA)
					return
				case errB != nil && !errors.Is(errB, ErrUnauthorized):
					errs <- fmt.Errorf("key b: %v", errB)
					return
				}
			}
		}()
	}
	for i := range 200 {
		if i%2 == 0 {
			gatewaytest.WriteFile(t, path, setB)
		} else {
			gatewaytest.WriteFile(t, path, setA)
		}
		if err := a.Reload(); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			// An occasional failed reload in the mix.
			gatewaytest.WriteFile(t, path, "keys: {")
			if err := a.Reload(); err == nil {
				t.Fatal("Reload accepted broken YAML")
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if a.Keys().Len() != 1 {
		t.Errorf("final set has %d keys, want set A's 1", a.Keys().Len())
	}
}

func FuzzParseKeys(f *testing.F) {
	f.Add([]byte(authYAML()))
	f.Add([]byte("keys: []\n"))
	f.Add([]byte(""))
	f.Add([]byte("keys: [\n"))
	f.Add([]byte("keys:\n  - {name: k, sha256: " + authHashOps + ", topics: [\"#\", \"+/x\", \"a/+/#\"]}\n"))
	f.Add([]byte("keys:\n  - {name: k, sha256: " + authHashOps + ", topics: [\"$share/g/a\"]}\n"))
	f.Add([]byte("keys:\n  - {name: k, sha256: " + authHashOps + ", topics: [\"a/#/b\", \"a+\"]}\n"))
	f.Add([]byte("keys:\n  - {name: k, sha256: " + authHashOps[:10] + ", topics: [a]}\n"))
	f.Add([]byte("keys:\n  - {name: k, sha256: " + authHashOps + ", topics: [a]}\n  - {name: k, sha256: " + authHashService + ", topics: [a]}\n"))
	f.Add([]byte("keys: &a [*a]\n"))
	f.Add([]byte("keys:\n  - name: k\n    sha256: " + authHashOps + "\n    topics: [a]\n    extra: 1\n"))
	f.Add([]byte("keys:\n  - !!binary aGVsbG8=\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := ParseKeys(data)
		if err != nil {
			if ks != nil {
				t.Fatal("ParseKeys returned a KeySet and an error")
			}
			return
		}
		names := map[string]bool{}
		hashes := map[string]bool{}
		for _, k := range ks.keys {
			h := hex.EncodeToString(k.hash[:])
			if len(h) != 64 || hashes[h] {
				t.Fatalf("bad or duplicate hash %q", h)
			}
			if strings.TrimSpace(k.name) == "" || names[k.name] {
				t.Fatalf("empty or duplicate name %q", k.name)
			}
			hashes[h], names[k.name] = true, true
			if len(k.topics) == 0 {
				t.Fatalf("key %q has no topics", k.name)
			}
			for _, f := range k.topics {
				if !isGrantFilter(f) {
					t.Fatalf("key %q has invalid filter %q", k.name, f)
				}
			}
			// Matching never panics and each key matches its own literal
			// filters' topics.
			for _, f := range k.topics {
				_ = ks.Allowed(k.name, f)
				if !strings.ContainsAny(f, "+#") && !ks.Allowed(k.name, f) {
					t.Fatalf("key %q is not allowed its own topic %q", k.name, f)
				}
			}
		}
		_, _ = ks.Check(authRequest("x", "X-API-Key", "k"), "x")
	})
}

// isGrantFilter reports whether f is a filter an auth file may grant, read
// from MQTT's rules independently of the code under test: not empty
// [MQTT-4.7.3-1], each wildcard a whole level and '#' only last
// [MQTT-4.7.1-2] [MQTT-4.7.1-3], and no leading '$', which rules out
// $share/... filters and "$" topics, which no request can publish to.
func isGrantFilter(f string) bool {
	if f == "" || strings.HasPrefix(f, "$") {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return false
		case l != "+" && l != "#" && strings.ContainsAny(l, "+#"):
			return false
		}
	}
	return true
}
