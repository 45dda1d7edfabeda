package deploy_test

// compose.yaml: its gateways and their neighbours as compose runs them.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCompose checks compose.yaml's gateways: unique instance ids, a stop
// grace period that covers --shutdown-grace, and no "$" that compose
// would take for a variable.
func TestCompose(t *testing.T) {
	ps := loadPrograms(t)
	files := loadYAML(t)
	ids := map[string]string{}
	for _, s := range composeServices(files) {
		// "$share/…" must be written "$$share/…".
		checkDollars(t, fmt.Sprintf("%s: service %s", s.file, s.name), s.spec)

		if p, _ := ps.program(s.run.argv); p != ps.gateway {
			continue
		}
		where := s.run.where
		_, args := ps.program(s.run.argv)
		id, ok := flagValue(args, "instance-id")
		if !ok {
			id = s.run.env["MQTTGW_INSTANCE_ID"]
		}
		if id != "" {
			if other, dup := ids[id]; dup {
				t.Errorf("%s: instance id %q is also %s's: replicas would steal each other's replies", where, id, other)
			}
			ids[id] = s.name
			if r, ok := mapOf(s.spec["deploy"])["replicas"].(int); ok && r > 1 {
				t.Errorf("%s: %d replicas share instance id %q", where, r, id)
			}
		}

		grace, err := ps.duration(t, s.run, "shutdown-grace")
		if err != nil {
			t.Error(err)
			continue
		}
		stop := 10 * time.Second // compose's default
		if v := str(s.spec["stop_grace_period"]); v != "" {
			if stop, err = time.ParseDuration(v); err != nil {
				t.Errorf("%s: stop_grace_period: %v", where, err)
				continue
			}
		}
		if stop <= grace {
			t.Errorf("%s: stop_grace_period %v is not above --shutdown-grace %v: Docker would kill requests still draining", where, stop, grace)
		}
	}
}

// checkDollars reports a bare "$name" in any string of v: compose
// interpolates it (to "" when unset); a literal "$" is written "$$".
func checkDollars(t *testing.T, where string, v any) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			checkDollars(t, where, k)
			checkDollars(t, where, e)
		}
	case []any:
		for _, e := range v {
			checkDollars(t, where, e)
		}
	case string:
		for i := 0; i < len(v)-1; i++ {
			if v[i] != '$' {
				continue
			}
			if next := v[i+1]; next == '$' {
				i++
			} else if next == '_' || ('a' <= next|0x20 && next|0x20 <= 'z') {
				t.Errorf("%s: %q: compose would substitute a variable for $%s…; write $$ for a literal $", where, v, v[i+1:])
			}
		}
	}
}

// composeService is a service of compose.yaml.
type composeService struct {
	file, name string
	spec       map[string]any
	ours       bool
	run        command // its main command; argv nil if not ours
	checks     []command
}

func composeServices(files []yamlFile) []composeService {
	var out []composeService
	for _, f := range files {
		for _, doc := range f.docs {
			services := mapOf(doc["services"])
			for _, name := range sortedKeys(services) {
				spec := mapOf(services[name])
				s := composeService{file: f.path, name: name, spec: spec}
				s.ours = isOurImage(str(spec["image"]), spec["build"])
				where := fmt.Sprintf("%s: service %s", f.path, name)
				env := envOf(spec["environment"])
				argv := composeUnescape(argvOf(spec["entrypoint"]))
				if len(argv) == 0 && s.ours {
					argv = []string{"/mqttgw"}
				}
				if len(argv) > 0 {
					argv = append(argv, composeUnescape(argvOf(spec["command"]))...)
					s.run = command{where: where, argv: argv, env: env}
				}
				if hc := mapOf(spec["healthcheck"]); hc != nil {
					test := composeUnescape(argvOf(hc["test"]))
					if len(test) > 0 && (test[0] == "CMD" || test[0] == "CMD-SHELL") {
						test = test[1:]
					}
					if len(test) > 0 {
						s.checks = append(s.checks, command{where: where + " healthcheck", argv: test, env: env})
					}
				}
				out = append(out, s)
			}
		}
	}
	return out
}

// composeUnescape undoes compose's "$$" → "$".
func composeUnescape(argv []string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = strings.ReplaceAll(a, "$$", "$")
	}
	return out
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
