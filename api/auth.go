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
// A key's topics are MQTT topic filters, matched by gateway.MatchFilter,
// the one matcher of the auth file and the broker's users file.

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/grantfile"
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
	keys   []authKey
	byName map[string]int // index into keys
}

type authKey struct {
	name   string
	hash   [sha256.Size]byte
	topics []string
}

// authFileKey is an entry of the auth file.
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
// request through. Errors name the entry's line, never a hash.
func ParseKeys(data []byte) (*KeySet, error) {
	entries, err := grantfile.Parse(data, "keys", "key", func(e authFileKey) string { return e.Name }, parseAuthKey)
	if err != nil {
		return nil, err
	}
	ks := &KeySet{byName: map[string]int{}}
	hashes := map[[sha256.Size]byte]int{}
	for i, e := range entries {
		k := e.Value
		if j, dup := ks.byName[k.name]; dup {
			return nil, fmt.Errorf("%s: name already used by %s", e.Where, entries[j].Where)
		}
		if j, dup := hashes[k.hash]; dup {
			return nil, fmt.Errorf("%s: same sha256 as %s", e.Where, entries[j].Where)
		}
		ks.byName[k.name], hashes[k.hash] = i, i
		ks.keys = append(ks.keys, k)
	}
	return ks, nil
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
	if gateway.IsSharedFilter(filter) {
		return errors.New("is a shared subscription ($share/...); list the topic itself")
	}
	if strings.HasPrefix(filter, "$") {
		return errors.New("starts with '$'; the gateway never publishes to such topics")
	}
	return nil
}

// Len returns the number of keys.
func (ks *KeySet) Len() int { return len(ks.keys) }

// Allowed reports whether the key named keyName may publish to topic: one
// of its filters matches topic, as the broker matches filters (so "#" and
// "+" never match a topic starting with '$').
func (ks *KeySet) Allowed(keyName, topic string) bool {
	i, ok := ks.byName[keyName]
	if !ok {
		return false
	}
	return gateway.MatchAny(ks.keys[i].topics, topic)
}

// Check authenticates r and authorizes it to publish to topic; see
// Authenticator.Check.
func (ks *KeySet) Check(r *http.Request, topic string) (keyName string, err error) {
	name, err := ks.Identify(r)
	if err != nil {
		return "", err
	}
	if !ks.Allowed(name, topic) {
		return name, &AuthError{
			Err:     ErrForbidden,
			Detail:  fmt.Sprintf("API key %q may not publish to topic %q", name, topic),
			KeyName: name,
		}
	}
	return name, nil
}

// Identify returns the name of the API key r presents, whatever topics it
// may publish to, or ErrUnauthorized.
func (ks *KeySet) Identify(r *http.Request) (keyName string, err error) {
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
	return ks.keys[match].name, nil
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
	file *grantfile.File[*KeySet]
}

// NewAuthenticator loads the auth file at path.
func NewAuthenticator(path string) (*Authenticator, error) {
	f, err := grantfile.Open("auth file", path, ParseKeys)
	if err != nil {
		return nil, err
	}
	return &Authenticator{file: f}, nil
}

// Reload re-reads the auth file and, if it is valid, atomically replaces
// the keys: each Check sees either the old or the new set in full. On
// error the old keys stay in force and the error is returned.
func (a *Authenticator) Reload() error { return a.file.Reload() }

// Keys returns the key set in force.
func (a *Authenticator) Keys() *KeySet { return a.file.Current() }

// Check authenticates r by its API key, taken from "Authorization: Bearer
// <key>" or "X-API-Key: <key>", and authorizes it to publish to topic. It
// returns the key's name, and an *AuthError wrapping ErrUnauthorized (no
// key, malformed, unknown) or ErrForbidden (the key's filters don't match
// topic; keyName is then set too).
func (a *Authenticator) Check(r *http.Request, topic string) (keyName string, err error) {
	return a.file.Current().Check(r, topic)
}

// Identify is KeySet.Identify with the keys in force.
func (a *Authenticator) Identify(r *http.Request) (keyName string, err error) {
	return a.file.Current().Identify(r)
}
