package broker

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func TestFilterCovers(t *testing.T) {
	for _, c := range []struct {
		g, f string
		want bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a", false},
		{"a", "a/b", false},
		{"#", "a/b/#", true},
		{"#", "+", true},
		{"#", "$SYS/#", false}, // "#" never matches "$" topics
		{"#", "$x", false},
		{"$SYS/#", "$SYS/broker/+", true},
		{"+/#", "$x/a", false},
		{"+", "a", true},
		{"+", "+", true},
		{"+", "#", false},
		{"a/+", "a/#", false}, // "a/#" matches a/b/c
		{"a/+", "a/+", true},
		{"a/+", "a/+/c", false},
		{"a/+/c", "a/+/c", true},
		{"a/+/c", "a/b/c", true},
		{"a/b/c", "a/+/c", false},
		{"a/#", "a", true}, // "a/#" matches its parent "a"
		{"a/#", "a/#", true},
		{"a/#", "a/+/#", true},
		{"a/#", "a/b/+", true},
		{"a/#", "b/#", false},
		{"a/b/#", "a/#", false},
		{"a/+/#", "a/b", true},   // "#" matches the parent level too
		{"a/+/#", "a/b/#", true}, // ... so it covers a/b as well
		{"a/+/#", "a", false},
		{"a/+/#", "a/+/c/#", true},
		{"a/+/#", "a/+/+", true},
		{"+/+", "a/+", true},
		{"", "", true},
		{"/", "/", true},
		{"+/", "a/", true},
		{"+/#", "/#", true}, // "/#" matches no parent: "" is no topic
		{"+/#", "#", true},  // both match one level or more
		{"a/+/#", "a/#", false},
	} {
		if got := filterCovers(c.g, c.f); got != c.want {
			t.Errorf("filterCovers(%q, %q) = %v, want %v", c.g, c.f, got, c.want)
		}
	}
}

// TestFilterCoversAgreesWithMatchFilter checks filterCovers against the
// matcher of topic names, exhaustively over filters of up to three levels
// and topics of up to four: a requested filter f is covered by a granted
// filter g exactly when every topic f matches is matched by g. For a
// topic name, coverage must be matching itself. "b" and "$y" appear in
// topics only, as the level no filter names.
func TestFilterCoversAgreesWithMatchFilter(t *testing.T) {
	var filters, topics []string
	for _, f := range combine([]string{"a", "$x", "", "+", "#"}, 3) {
		if gateway.CheckFilter(f) == nil {
			filters = append(filters, f)
		}
	}
	for _, tp := range combine([]string{"a", "b", "$x", "$y", ""}, 4) {
		if tp != "" {
			topics = append(topics, tp)
		}
	}
	matchSet := func(filter string) []bool {
		set := make([]bool, len(topics))
		for i, tp := range topics {
			set[i] = gateway.MatchFilter(filter, tp)
		}
		return set
	}
	sets := make([][]bool, len(filters))
	for i, f := range filters {
		sets[i] = matchSet(f)
	}

	for gi, g := range filters {
		for ti, tp := range topics {
			if got := filterCovers(g, tp); got != sets[gi][ti] {
				t.Errorf("filterCovers(%q, topic %q) = %v, MatchFilter: %v", g, tp, got, sets[gi][ti])
			}
		}
		for fi, f := range filters {
			witness := ""
			for ti := range topics {
				if sets[fi][ti] && !sets[gi][ti] {
					witness = topics[ti]
					break
				}
			}
			switch got := filterCovers(g, f); {
			case got && witness != "":
				t.Errorf("filterCovers(%q, %q) = true, but %q matches topic %q and %q doesn't", g, f, f, witness, g)
			case !got && witness == "":
				t.Errorf("filterCovers(%q, %q) = false, but every topic %q matches is matched by %q", g, f, f, g)
			}
		}
	}
	t.Logf("%d filters × %d topics", len(filters), len(topics))
}

// combine returns every string of 1..n levels drawn from alphabet.
func combine(alphabet []string, n int) []string {
	out := append([]string(nil), alphabet...)
	prev := out
	for range n - 1 {
		var next []string
		for _, p := range prev {
			for _, l := range alphabet {
				next = append(next, p+"/"+l)
			}
		}
		out = append(out, next...)
		prev = next
	}
	return out
}

func TestParseUsers(t *testing.T) {
	hash := gatewaytest.Bcrypt(t, "secret")
	table, err := parseUsers([]byte(`
users:
  - username: responder
    password_bcrypt: "` + hash + `"
    publish: ["mqttgw/reply/#"]
    subscribe: ["svc/#", "jobs/+/run"]
  - username: monitor
    password_bcrypt: '` + hash + `'
    subscribe: ["#"]
`))
	if err != nil {
		t.Fatal(err)
	}
	r, m := table.lookup([]byte("responder")), table.lookup([]byte("monitor"))
	if r == nil || m == nil || len(table.users) != 2 || table.lookup([]byte("nobody")) != nil {
		t.Fatalf("users %v", table.users)
	}
	if !r.checkPassword([]byte("secret")) || r.checkPassword([]byte("Secret")) || r.checkPassword(nil) {
		t.Error("checkPassword")
	}
	var nobody *user
	if nobody.checkPassword([]byte("secret")) {
		t.Error("unknown user accepted")
	}
	for _, c := range []struct {
		u      *user
		topic  string
		pub    bool
		sub    bool
		reason string
	}{
		{r, "mqttgw/reply/abc/1", true, false, "responder answers"},
		{r, "mqttgw/reply", true, false, `"x/#" matches its parent`},
		{r, "svc/echo", false, true, ""},
		{r, "svc/#", false, true, "a filter under svc/#"},
		{r, "svc/+/x", false, true, ""},
		{r, "+/echo", false, false, "a filter wider than svc/#"},
		{r, "jobs/7/run", false, true, ""},
		{r, "jobs/+/run", false, true, ""},
		{r, "jobs/#", false, false, ""},
		{r, "", false, false, "topic alias only"},
		{m, "anything/at/all", false, true, ""},
		{m, "$SYS/broker/uptime", false, false, `"#" doesn't match "$" topics`},
		{m, "x", false, true, ""},
	} {
		if got := c.u.canPublish(c.topic); got != c.pub {
			t.Errorf("%s canPublish(%q) = %v (%s)", c.u.name, c.topic, got, c.reason)
		}
		if got := c.u.canRead(c.topic); got != c.sub {
			t.Errorf("%s canRead(%q) = %v (%s)", c.u.name, c.topic, got, c.reason)
		}
	}

	table, err = parseUsers([]byte("users: []\n"))
	if err != nil || len(table.users) != 0 {
		t.Fatalf("empty list: %v %v", table, err)
	}
}

func TestParseUsersErrors(t *testing.T) {
	hash := gatewaytest.Bcrypt(t, "pw")
	entry := func(extra string) string {
		return "users:\n  - username: ok\n    password_bcrypt: " + hash + "\n  - username: bob\n    password_bcrypt: " + hash + "\n" + extra
	}
	for _, c := range []struct{ file, want string }{
		{"", "empty"},
		{"  \n\t\n", "empty"},
		{"user: []", `unknown top-level field "user"`},
		{"other: 1", `unknown top-level field "other"`},
		{"users: {}", "line 1"},
		{"# just a comment\n", `no documents`},
		{"users:\n", `no "users" list`},
		{"users: ~\n", `no "users" list`},
		{"users:\n  - username: a\n    password: x\n", `line 3`},
		{"users:\n  - username: a\n    password: x\n", `field password not found`},
		{"users:\n  - password_bcrypt: " + hash + "\n", "line 2: user 1: username is empty"},
		{"users:\n  - username: \"\\0x\"\n    password_bcrypt: " + hash + "\n", "NUL"},
		{"users:\n  - username: a\n", `line 2: user 1 ("a"): password_bcrypt is empty`},
		{"users:\n  - username: a\n    password_bcrypt: hunter2\n", "not a bcrypt hash"},
		{"users:\n  - username: a\n    password_bcrypt: $1$saltsalt$qjXMvbEw8oaL.CzflDugX/\n", "not a bcrypt hash"},
		{"users:\n  - username: a\n    password_bcrypt: " + strings.Replace(hash, "$04$", "$99$", 1) + "\n", "not a bcrypt hash"},
		{"users:\n  - username: a\n    password_bcrypt: " + hash[:59] + "!\n", "not a bcrypt hash"},
		{entry("  - username: ok\n    password_bcrypt: " + hash + "\n"), `line 6: user 3 ("ok"): username already listed on line 2`},
		{entry("    publish: [\"a/#/b\"]\n"), `line 4: user 2 ("bob"): publish filter "a/#/b" has "#" before its last level`},
		{entry("    subscribe: [\"\"]\n"), `subscribe filter "" is empty`},
		{entry("    subscribe: [\"$share/g/x\"]\n"), `shared subscription`},
		{entry("    subscribe: [\"a+/b\"]\n"), `not a whole level`},
		{entry("    publish: [\"a/b#\"]\n"), `not a whole level`},
		{entry("    publish: x\n"), `line 6`},
		{entry("    subscribe: [[1]]\n"), `line 6`},
	} {
		_, err := parseUsers([]byte(c.file))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseUsers(%q) = %v, want an error containing %q", c.file, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error %q echoes the password", err)
		}
	}
}

func TestLoadUsersNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.yaml")
	gatewaytest.WriteFile(t, path, "users:\n  - username: x\n")
	_, err := New(Config{UsersFile: path})
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("got %v", err)
	}
	_, err = New(Config{UsersFile: path + ".missing"})
	if err == nil || !strings.Contains(err.Error(), path+".missing") {
		t.Fatalf("got %v", err)
	}
}

// FuzzParseUsers checks that no file makes the parser panic, and that
// whatever it accepts is usable: every user has a name and a bcrypt hash,
// and matching its filters doesn't panic either.
func FuzzParseUsers(f *testing.F) {
	hash := gatewaytest.Bcrypt(f, "pw")
	for _, seed := range []string{
		"",
		"users: []",
		"users:\n  - username: a\n    password_bcrypt: " + hash + "\n    publish: [\"a/#\"]\n    subscribe: [\"+/b\", \"#\"]\n",
		"users:\n  - username: a\n    password_bcrypt: " + hash + "\n  - username: a\n",
		"users:\n  - {username: b, password_bcrypt: '" + hash + "', subscribe: [$SYS/#, /, +/+/#]}\n",
		"users: &a [*a]",
		"users:\n  - !!binary aGVsbG8=\n",
		"users: [{username: x, publish: [\"\\xff\"]}]",
		"---\nusers: []\n---\nusers: []\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		table, err := parseUsers(data)
		if err != nil {
			return
		}
		for name, u := range table.users {
			if name == "" || name != u.name || !isBcryptHash(u.hash) {
				t.Fatalf("accepted user %q with hash %q", name, u.hash)
			}
			for _, topic := range []string{"a", "a/b", "$SYS/x", "", "+", "a/#"} {
				u.canPublish(topic)
				u.canRead(topic)
			}
			for _, g := range u.sub {
				if !u.canRead(g) {
					t.Fatalf("user %q can't subscribe with its own filter %q", name, g)
				}
			}
		}
	})
}
