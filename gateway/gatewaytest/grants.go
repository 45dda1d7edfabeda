package gatewaytest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// User is an entry of an embedded broker's users file (--mqtt-users-file).
type User struct {
	Name, Password     string
	Publish, Subscribe []string
}

// WriteUsers writes a users file for users to path, atomically, with
// bcrypt hashes of the lowest cost, to be quick.
func WriteUsers(tb testing.TB, path string, users ...User) {
	tb.Helper()
	var b strings.Builder
	b.WriteString("users:\n")
	for _, u := range users {
		fmt.Fprintf(&b, "  - username: %q\n    password_bcrypt: %q\n    publish: %s\n    subscribe: %s\n",
			u.Name, Bcrypt(tb, u.Password), yamlList(u.Publish), yamlList(u.Subscribe))
	}
	WriteFile(tb, path, b.String())
}

// Bcrypt hashes password at the lowest cost.
func Bcrypt(tb testing.TB, password string) string {
	tb.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	return string(h)
}

// Key is an entry of an API keys file (--auth-file).
type Key struct {
	Name, Key string
	Topics    []string
}

// WriteKeys writes an API keys file for keys to path, atomically.
func WriteKeys(tb testing.TB, path string, keys ...Key) {
	tb.Helper()
	var b strings.Builder
	b.WriteString("keys:\n")
	for _, k := range keys {
		sum := sha256.Sum256([]byte(k.Key))
		fmt.Fprintf(&b, "  - name: %q\n    sha256: %s\n    topics: %s\n", k.Name, hex.EncodeToString(sum[:]), yamlList(k.Topics))
	}
	WriteFile(tb, path, b.String())
}

func yamlList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
