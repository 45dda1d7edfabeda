package api

// API-key authentication and per-key topic authorization for the routes
// that publish.
//
// The auth file (YAML) lists the keys:
//
//	keys:
//	  - name: ops-dashboard
//	    sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//	    topics: ["devices/+/reboot", "service/#"]
//
// Only the hex SHA-256 of each key is stored. A fast unsalted hash is the
// right tool here, unlike for passwords: API keys are long random secrets
// (generate 32 random bytes), so there is nothing to brute-force or look
// up in a rainbow table, and a slow KDF such as bcrypt would cost ~50 ms of
// CPU on every request for no gain in security.
//
// A key's topics are MQTT topic filters, matched with the embedded
// broker's (mochi's) own topic index, so that "+" and "#" mean exactly
// what they mean to the broker.

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.yaml.in/yaml/v4"

	"github.com/mqttgw/mqttgw/gateway"
)

// Sentinel errors of Check; test with errors.Is. The errors Check returns
// are *AuthError values that wrap one of them.
var (
	// ErrUnauthorized: no API key, a malformed one, or an unknown one
	// (HTTP 401 with a WWW-Authenticate challenge).
	ErrUnauthorized = errors.New("api: unauthorized")
	// ErrForbidden: a known key whose topic filters don't match the topic
	// (HTTP 403).
	ErrForbidden = errors.New("api: forbidden")
)

// AuthError is the error Check returns. Detail is written for the client
// and never contains the presented key.
type AuthError struct {
	Err     error  // ErrUnauthorized or ErrForbidden
	Detail  string // human-readable reason, safe to show to the client
	KeyName string // the authenticated key's name (set with ErrForbidden only)
}

func (e *AuthError) Error() string { return e.Err.Error() + ": " + e.Detail }
func (e *AuthError) Unwrap() error { return e.Err }

// Request headers that carry the API key.
const (
	authHeaderAuthorization = "Authorization"
	authHeaderAPIKey        = "X-API-Key"
)

// HashKey returns the hex SHA-256 of an API key: the value of "sha256" in
// the auth file.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// KeySet is a parsed, validated auth file. It is immutable and safe for
// concurrent use.
type KeySet struct {
	keys  []authKey
	index *mqtt.TopicsIndex // every filter of every key, subscribed under the key's name
}

type authKey struct {
	name   string
	hash   [sha256.Size]byte
	topics []string
}

// authFile and authFileKey are the YAML schema. Keys is a pointer so that
// a file without "keys" (empty, truncated, or a different file) is told
// apart from an explicit "keys: []".
// Each entry is loaded on its own, so that its errors (unknown fields,
// wrong types) can name it.
type authFile struct {
	Keys *[]yaml.Node `yaml:"keys"`
}

type authFileKey struct {
	Name   string   `yaml:"name"`
	SHA256 string   `yaml:"sha256"`
	Topics []string `yaml:"topics"`
}

// ParseKeys parses and validates an auth file. It refuses unknown fields,
// a document without "keys", empty or duplicate names, duplicate hashes,
// hashes that are not 64 hex digits, keys without topics, and topic
// filters that the broker would refuse or that can never match a request
// topic (shared-subscription filters, filters starting with '$', wildcards
// that are not a whole level). An explicit "keys: []" is valid and lets no
// request through.
func ParseKeys(data []byte) (*KeySet, error) {
	var f authFile
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New(`auth file is empty; it needs a "keys" list`)
	}
	if err := yaml.Load(data, &f, yaml.WithKnownFields()); err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	if f.Keys == nil {
		return nil, errors.New(`auth file has no "keys" list`)
	}
	ks := &KeySet{index: mqtt.NewTopicsIndex()}
	names := map[string]int{}
	hashes := map[[sha256.Size]byte]int{}
	for i, node := range *f.Keys {
		var e authFileKey
		if err := node.Load(&e, yaml.WithKnownFields()); err != nil {
			var lenient authFileKey
			_ = node.Load(&lenient) // for the name in the message, if it has one
			return nil, fmt.Errorf("%s: %w", authEntryName(i, lenient.Name), err)
		}
		k, err := parseAuthKey(e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", authEntryName(i, e.Name), err)
		}
		if j, dup := names[k.name]; dup {
			return nil, fmt.Errorf("%s: name already used by key %d", authEntryName(i, e.Name), j+1)
		}
		if j, dup := hashes[k.hash]; dup {
			return nil, fmt.Errorf("%s: same sha256 as %s", authEntryName(i, e.Name), authEntryName(j, ks.keys[j].name))
		}
		names[k.name], hashes[k.hash] = i, i
		ks.keys = append(ks.keys, k)
		for _, filter := range k.topics {
			ks.index.Subscribe(k.name, packets.Subscription{Filter: filter})
			// "x/#" also matches x itself [MQTT-4.7.1-2]. mochi's index
			// does that for "a/#" but not when the level before "#" is
			// "+" ("a/+/#" misses "a/b"), so the parent is indexed too.
			if parent, ok := strings.CutSuffix(filter, "/#"); ok && parent != "" {
				ks.index.Subscribe(k.name, packets.Subscription{Filter: parent})
			}
		}
	}
	return ks, nil
}

// authEntryName names entry i (0-based) of the file in an error message.
func authEntryName(i int, name string) string {
	if name == "" {
		return fmt.Sprintf("key %d", i+1)
	}
	return fmt.Sprintf("key %d (%q)", i+1, name)
}

func parseAuthKey(e authFileKey) (authKey, error) {
	k := authKey{name: e.Name}
	if strings.TrimSpace(e.Name) == "" {
		return k, errors.New("name is empty")
	}
	if err := gateway.CheckString(e.Name); err != nil {
		return k, fmt.Errorf("name %v", err)
	}
	// Never echo the sha256 value: if someone pasted the key itself here,
	// the error message would leak it into logs.
	if len(e.SHA256) != 2*sha256.Size {
		return k, fmt.Errorf("sha256 has %d characters, want the 64 hex digits of the key's SHA-256 (not the key itself)", len(e.SHA256))
	}
	if _, err := hex.Decode(k.hash[:], []byte(e.SHA256)); err != nil {
		return k, errors.New("sha256 is not 64 hex digits")
	}
	if len(e.Topics) == 0 {
		return k, errors.New("topics is empty; list the topic filters this key may publish to")
	}
	for _, filter := range e.Topics {
		if err := checkAuthFilter(filter); err != nil {
			return k, fmt.Errorf("topic filter %q %w", filter, err)
		}
	}
	k.topics = append([]string(nil), e.Topics...)
	return k, nil
}

// checkAuthFilter says why filter can't be a key's topic filter.
func checkAuthFilter(filter string) error {
	if err := gateway.CheckFilter(filter); err != nil {
		return err
	}
	if mqtt.IsSharedFilter(filter) {
		return errors.New("is a shared subscription ($share/...); list the topic itself")
	}
	if strings.HasPrefix(filter, "$") {
		return errors.New("starts with '$'; the gateway never publishes to such topics")
	}
	return nil
}

// Len returns the number of keys.
func (ks *KeySet) Len() int { return len(ks.keys) }

// Names returns the keys' names in file order.
func (ks *KeySet) Names() []string {
	names := make([]string, len(ks.keys))
	for i, k := range ks.keys {
		names[i] = k.name
	}
	return names
}

// Allowed reports whether the key named keyName may publish to topic: one
// of its filters matches topic, as the broker matches filters (so "#" and
// "+" never match a topic starting with '$').
func (ks *KeySet) Allowed(keyName, topic string) bool {
	if topic == "" {
		return false
	}
	_, ok := ks.index.Subscribers(topic).Subscriptions[keyName]
	return ok
}

// Check authenticates r and authorizes it to publish to topic; see
// Authenticator.Check.
func (ks *KeySet) Check(r *http.Request, topic string) (keyName string, err error) {
	key, err := presentedKey(r.Header)
	if err != nil {
		return "", err
	}
	// Constant time: hash the presented key and compare it with every
	// stored hash, without stopping at a match, so the time taken reveals
	// neither whether nor which entry matched. A map keyed by the hash
	// would be safe too (timing could at most leak a prefix of the
	// presented key's own hash, and SHA-256 preimage resistance makes
	// that useless to an attacker), but the loop is obviously safe and a
	// few dozen 32-byte compares cost nothing next to an MQTT round trip.
	sum := sha256.Sum256([]byte(key))
	match := -1
	for i := range ks.keys {
		eq := subtle.ConstantTimeCompare(sum[:], ks.keys[i].hash[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return "", &AuthError{Err: ErrUnauthorized, Detail: "unknown API key"}
	}
	name := ks.keys[match].name
	if !ks.Allowed(name, topic) {
		return name, &AuthError{
			Err:     ErrForbidden,
			Detail:  fmt.Sprintf("API key %q may not publish to topic %q", name, topic),
			KeyName: name,
		}
	}
	return name, nil
}

// presentedKey extracts the API key from "Authorization: Bearer <key>" or
// "X-API-Key: <key>". Both may be sent if they carry the same key, and a
// non-Bearer Authorization (say, Basic auth for a proxy in front) is
// ignored when X-API-Key is present. Error details never contain the key.
func presentedKey(h http.Header) (string, error) {
	unauthorized := func(detail string) error {
		return &AuthError{Err: ErrUnauthorized, Detail: detail}
	}
	authz, apiKey := h.Values(authHeaderAuthorization), h.Values(authHeaderAPIKey)
	if len(authz) > 1 {
		return "", unauthorized("more than one Authorization header")
	}
	if len(apiKey) > 1 {
		return "", unauthorized("more than one X-API-Key header")
	}
	var bearer string
	var haveBearer, otherScheme bool
	if len(authz) == 1 {
		scheme, token, _ := strings.Cut(strings.TrimSpace(authz[0]), " ")
		if strings.EqualFold(scheme, "Bearer") {
			bearer, haveBearer = strings.TrimSpace(token), true
			if bearer == "" {
				return "", unauthorized(`empty Bearer token; send "Authorization: Bearer <key>"`)
			}
		} else {
			otherScheme = true
		}
	}
	var header string
	haveHeader := len(apiKey) == 1
	if haveHeader {
		header = strings.TrimSpace(apiKey[0])
		if header == "" {
			return "", unauthorized("empty X-API-Key header")
		}
	}
	switch {
	case haveBearer && haveHeader:
		if subtle.ConstantTimeCompare([]byte(bearer), []byte(header)) != 1 {
			return "", unauthorized("Authorization and X-API-Key carry different keys")
		}
		return bearer, nil
	case haveBearer:
		return bearer, nil
	case haveHeader:
		return header, nil
	case otherScheme:
		// The "scheme" may be the key itself: don't quote it.
		return "", unauthorized(`the Authorization header is not "Bearer <key>"`)
	default:
		return "", unauthorized(`missing API key; send "Authorization: Bearer <key>" or "X-API-Key: <key>"`)
	}
}

// Authenticator checks requests against the keys of an auth file, which it
// can reload while requests are being checked.
type Authenticator struct {
	path   string
	keys   atomic.Pointer[KeySet]
	reload sync.Mutex // serializes Reload, so an older read never replaces a newer one
}

// NewAuthenticator loads the auth file at path.
func NewAuthenticator(path string) (*Authenticator, error) {
	a := &Authenticator{path: path}
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload re-reads the auth file and, if it is valid, atomically replaces
// the keys: each Check sees either the old or the new set in full. On
// error the old keys stay in force and the error is returned.
func (a *Authenticator) Reload() error {
	a.reload.Lock()
	defer a.reload.Unlock()
	data, err := os.ReadFile(a.path)
	if err != nil {
		return fmt.Errorf("reading auth file: %w", err)
	}
	ks, err := ParseKeys(data)
	if err != nil {
		return fmt.Errorf("%s: %w", a.path, err)
	}
	a.keys.Store(ks)
	return nil
}

// Path returns the auth file's path.
func (a *Authenticator) Path() string { return a.path }

// Keys returns the key set in force.
func (a *Authenticator) Keys() *KeySet { return a.keys.Load() }

// Check authenticates r by its API key, taken from "Authorization: Bearer
// <key>" or "X-API-Key: <key>", and authorizes it to publish to topic. It
// returns the key's name, and an *AuthError wrapping ErrUnauthorized (no
// key, malformed, unknown) or ErrForbidden (the key's filters don't match
// topic; keyName is then set too).
func (a *Authenticator) Check(r *http.Request, topic string) (keyName string, err error) {
	return a.keys.Load().Check(r, topic)
}
