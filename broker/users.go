package broker

// The users file of the embedded broker (Config.UsersFile):
//
//	users:
//	  - username: temperature-service
//	    password_bcrypt: "$2a$10$..." # htpasswd -nbBC 10 "" 'secret' | cut -d: -f2
//	    publish: ["mqttgw/reply/#"]    # replies to the gateway
//	    subscribe: ["svc/temperature/#"]
//	  - username: dashboard
//	    password_bcrypt: "$2a$10$..."
//	    subscribe: ["sensors/+/temperature"]
//
// publish lists the topic filters a user may publish to; subscribe lists
// the filters a user may subscribe with and receive messages from. Both
// are MQTT topic filters, "+" and "#" included, matched by
// gateway.MatchFilter as MQTT defines it (the auth file's keys are too).
// A SUBSCRIBE filter is granted when one subscribe filter covers it,
// i.e. matches every topic it can match (filterCovers); a
// "$share/<group>/" prefix is left out of the check. Every delivery is
// checked again against the subscribe filters in force, so a ReloadUsers
// narrows existing subscriptions too. A publish must name its topic: one
// by topic alias alone matches no filter and is refused.
//
// Whatever subscribe says, no network client ever reads the gateway's
// response prefix; a responder needs that prefix in publish (e.g.
// "mqttgw/reply/#") to answer requests.

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/grantfile"
)

// userTable is a parsed, validated users file. It is never modified after
// parseUsers returns, so that the hook can read it without locks while
// ReloadUsers swaps in a new one.
type userTable struct {
	users map[string]*user
}

// user is one entry of the users file.
type user struct {
	name string
	hash []byte
	// pub and sub are the user's publish and subscribe filters.
	pub, sub []string
}

// usersFileEntry is an entry of the users file.
type usersFileEntry struct {
	Username       string   `yaml:"username"`
	PasswordBcrypt string   `yaml:"password_bcrypt"`
	Publish        []string `yaml:"publish"`
	Subscribe      []string `yaml:"subscribe"`
}

// parseUsers parses and validates a users file. It refuses unknown
// fields, a document without "users", empty or duplicate usernames,
// password hashes that are not bcrypt, and filters that are not valid
// MQTT topic filters. An explicit "users: []" is valid and lets nobody in.
// Errors name the entry's line, never a hash.
func parseUsers(data []byte) (*userTable, error) {
	entries, err := grantfile.Parse(data, "users", "user", func(e usersFileEntry) string { return e.Username }, parseUser)
	if err != nil {
		return nil, err
	}
	t := &userTable{users: make(map[string]*user, len(entries))}
	lines := make(map[string]int, len(entries))
	for _, e := range entries {
		u := e.Value
		if line, dup := lines[u.name]; dup {
			return nil, fmt.Errorf("%s: username already listed on line %d", e.Where, line)
		}
		lines[u.name] = e.Line
		t.users[u.name] = u
	}
	return t, nil
}

// parseUser validates one entry of the users file.
func parseUser(e usersFileEntry) (*user, error) {
	if e.Username == "" {
		return nil, errors.New("username is empty")
	}
	if err := gateway.CheckString(e.Username); err != nil {
		return nil, fmt.Errorf("username %v", err)
	}
	u := &user{name: e.Username, hash: []byte(e.PasswordBcrypt), pub: e.Publish, sub: e.Subscribe}
	// Never echo the hash: if someone pasted the password itself here,
	// the error would leak it into logs.
	if e.PasswordBcrypt == "" {
		return nil, errors.New("password_bcrypt is empty")
	}
	if !isBcryptHash(u.hash) {
		return nil, errors.New("password_bcrypt is not a bcrypt hash (want 60 characters starting $2a$, $2b$ or $2y$, e.g. from htpasswd -nbBC 10 '' PASSWORD)")
	}
	for _, f := range e.Publish {
		if err := checkUserFilter(f); err != nil {
			return nil, fmt.Errorf("publish filter %q %w", f, err)
		}
	}
	for _, f := range e.Subscribe {
		if err := checkUserFilter(f); err != nil {
			return nil, fmt.Errorf("subscribe filter %q %w", f, err)
		}
	}
	return u, nil
}

// isBcryptHash reports whether h looks like a bcrypt hash:
// "$2a$" (or 2b, 2y), a two-digit cost, "$", then 53 characters of
// bcrypt's base64 (22 of salt, 31 of hash). bcrypt.Cost alone would
// accept any 59 bytes that start with "$" and a version up to 2.
func isBcryptHash(h []byte) bool {
	if len(h) != 60 || h[0] != '$' || h[1] != '2' || strings.IndexByte("aby", h[2]) < 0 || h[3] != '$' || h[6] != '$' {
		return false
	}
	for _, c := range h[7:] {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '/') {
			return false
		}
	}
	_, err := bcrypt.Cost(h) // checks the cost digits and range
	return err == nil
}

// checkUserFilter says why filter can't be one of a user's filters.
func checkUserFilter(filter string) error {
	if err := gateway.CheckFilter(filter); err != nil {
		return err
	}
	// A grant names topics; which share group a client joins is its own
	// business, and "$share/g/x" requests are checked as "x".
	if gateway.IsSharedFilter(filter) {
		return errors.New("is a shared subscription ($share/...); list the topic filter itself, which also allows $share/<group>/ subscriptions to it")
	}
	return nil
}

// lookup returns the named user, or nil.
func (t *userTable) lookup(name []byte) *user {
	return t.users[string(name)]
}

// checkPassword reports whether password is u's. A nil u (an unknown
// username) still costs one bcrypt comparison, so that response times
// don't tell which usernames exist.
func (u *user) checkPassword(password []byte) bool {
	if u == nil {
		_ = bcrypt.CompareHashAndPassword(dummyHash(), password)
		return false
	}
	return bcrypt.CompareHashAndPassword(u.hash, password) == nil
}

// dummyHash is a bcrypt hash of nothing at the default cost, made on first
// use so that programs without a users file never pay for it.
var dummyHash = sync.OnceValue(func() []byte {
	h, err := bcrypt.GenerateFromPassword(nil, bcrypt.DefaultCost)
	if err != nil {
		panic(err) // only for a cost out of range, which DefaultCost is not
	}
	return h
})

// canPublish reports whether u may publish to the topic name.
func (u *user) canPublish(topic string) bool {
	return gateway.MatchAny(u.pub, topic)
}

// canRead reports whether u may subscribe with filter (share prefix
// already removed) or, for a topic name, receive a message published to
// it. mochi asks the same question for both.
func (u *user) canRead(filter string) bool {
	if !strings.ContainsAny(filter, "+#") {
		// A topic name, or a filter that names one topic only.
		return gateway.MatchAny(u.sub, filter)
	}
	for _, g := range u.sub {
		if filterCovers(g, filter) {
			return true
		}
	}
	return false
}

// filterCovers reports whether the granted filter g matches every topic
// name that the requested filter f matches, as gateway.MatchFilter
// matches them, so that a subscription to f can only ever receive what g
// allows. (Deliveries are checked topic by topic anyway; this decides the
// SUBACK.)
//
// Level by level: "#" in g covers whatever f has from there on, the
// parent level included [MQTT-4.7.1-2]; "+" in g covers "+" or any one
// level in f; a literal level in g covers only the same literal in f.
// Wildcards at the first level never match topics starting with "$"
// [MQTT-4.7.2-1]. (Levels that mix a wildcard with other characters are
// refused in the users file, so they don't occur here.)
func filterCovers(g, f string) bool {
	gl, fl := strings.Split(g, "/"), strings.Split(f, "/")
	dollar := strings.HasPrefix(fl[0], "$") // f can match "$" topics only so
	for i := 0; ; i++ {
		switch {
		case i < len(gl) && gl[i] == "#":
			// The levels before matched; "#" takes the rest, and
			// the parent topic that f may match too.
			return i > 0 || !dollar
		case i == len(fl):
			// f's topics end here; g wants more levels (or ends too).
			return i == len(gl)
		case fl[i] == "#" && i+2 == len(gl) && gl[i] == "+" && gl[i+1] == "#" && (i == 0 || i == 1 && fl[0] == ""):
			// f's "#" matches one level or more here (its parent is
			// no topic: none, or the empty one of "/#"), as g's
			// "+/#" does.
			return true
		case i == len(gl), fl[i] == "#":
			// f matches longer topics (or any depth) that g doesn't.
			return false
		case gl[i] == "+":
			if i == 0 && dollar {
				return false
			}
		case gl[i] != fl[i]:
			return false
		}
	}
}
