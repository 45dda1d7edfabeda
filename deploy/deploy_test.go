package deploy_test

// The tests of deploy/ keep the deployment files honest: every MQTTGW_*
// variable and every --flag they hand to mqttgw or temperature-service
// must be one the real binaries list in --help, and the timeouts around
// the gateway (nginx, compose, Kubernetes) must leave room for what the
// gateway may take. Each artefact has its own test file (dockerfile_test.go,
// compose_test.go, kubernetes_test.go, nginx_test.go for both nginx
// configurations); this file holds what they share: the binaries' --help,
// the YAML walk, and the one check that spans them all and the README.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func TestMain(m *testing.M) { gatewaytest.Main(m) }

// cleanEnv is the test's environment without MQTTGW_* variables, for the
// binaries it runs: a variable set in the shell running the tests would
// otherwise change their defaults.
func cleanEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "MQTTGW_") })
}

// program is what a binary's --help says it accepts.
type program struct {
	name  string
	flags map[string]flagInfo
	env   map[string]string // MQTTGW_* variable → flag name
}

type flagInfo struct {
	isBool bool
	def    string // as --help prints it, unquoted
}

var (
	// "  --max-timeout duration" (mqttgw) or "  -topic string" (flag.PrintDefaults).
	flagLine = regexp.MustCompile(`^  --?([A-Za-z0-9][A-Za-z0-9_.-]*)(?: (\S+))?$`)
	// mqttgw: `(default "1m0s"; env MQTTGW_MAX_TIMEOUT)`;
	// PrintDefaults: `(default 3s)` or `(default "mqtt://…")`.
	mqttgwDefault = regexp.MustCompile(`\(default "([^"]*)"; env (MQTTGW_[A-Z0-9_]+)\)$`)
	plainDefault  = regexp.MustCompile(`\(default ("[^"]*"|\S+)\)$`)
	envWord       = regexp.MustCompile(`\bMQTTGW_[A-Z0-9_]+`)
)

// help runs the binary with args (ending in --help) and parses its flags.
func help(t *testing.T, name string, args ...string) *program {
	t.Helper()
	cmd := exec.Command(gatewaytest.Binary(t, name), args...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	p := &program{name: strings.Join(append([]string{name}, args[:len(args)-1]...), " "), flags: map[string]flagInfo{}, env: map[string]string{}}
	var last string
	for line := range strings.Lines(string(out)) {
		line = strings.TrimRight(line, "\n")
		if m := flagLine.FindStringSubmatch(line); m != nil {
			last = m[1]
			p.flags[last] = flagInfo{isBool: m[2] == ""}
			continue
		}
		if last == "" || !strings.HasPrefix(line, "    \t") {
			continue
		}
		f := p.flags[last]
		if m := mqttgwDefault.FindStringSubmatch(line); m != nil {
			f.def = m[1]
			p.env[m[2]] = last
		} else if m := plainDefault.FindStringSubmatch(line); m != nil {
			f.def = strings.Trim(m[1], `"`)
		}
		p.flags[last] = f
	}
	if len(p.flags) == 0 {
		t.Fatalf("%s: no flags found in --help output:\n%s", p.name, out)
	}
	return p
}

// programs are the three command lines of the image.
type programs struct {
	gateway, healthcheck, temperature *program
}

func loadPrograms(t *testing.T) programs {
	t.Helper()
	ps := programs{
		gateway:     help(t, "mqttgw", "--help"),
		healthcheck: help(t, "mqttgw", "healthcheck", "--help"),
		temperature: help(t, "temperature-service", "--help"),
	}
	// The help says it: every flag has a variable, named by the rule.
	for name := range ps.gateway.flags {
		want := "MQTTGW_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		if ps.gateway.env[want] != name {
			t.Fatalf("mqttgw --help: flag --%s does not list env %s", name, want)
		}
	}
	return ps
}

// gatewayDefault is the default of an mqttgw duration flag, from --help.
func (ps programs) gatewayDefault(t *testing.T, flag string) time.Duration {
	t.Helper()
	f, ok := ps.gateway.flags[flag]
	if !ok {
		t.Fatalf("mqttgw --help has no --%s", flag)
	}
	d, err := time.ParseDuration(f.def)
	if err != nil {
		t.Fatalf("mqttgw --help: default of --%s: %v", flag, err)
	}
	return d
}

// command is one command line found in a deployment file.
type command struct {
	where string
	argv  []string
	env   map[string]string // MQTTGW_* it runs with; "" = set from elsewhere
}

// program is the binary argv runs and the arguments it parses, or nil when
// it is not one of ours (EMQX, nginx).
func (ps programs) program(argv []string) (*program, []string) {
	if len(argv) == 0 {
		return nil, nil
	}
	switch path.Base(argv[0]) {
	case "mqttgw":
		if len(argv) > 1 && argv[1] == "healthcheck" {
			return ps.healthcheck, argv[2:]
		}
		return ps.gateway, argv[1:]
	case "temperature-service":
		return ps.temperature, argv[1:]
	}
	return nil, nil
}

// checkArgs reports each flag p does not know, and arguments it would
// refuse as positional.
func checkArgs(p *program, args []string) []string {
	var errs []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			errs = append(errs, fmt.Sprintf("%s takes no positional argument, got %q", p.name, a))
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f, ok := p.flags[name]
		if !ok {
			errs = append(errs, fmt.Sprintf("%s has no flag --%s (see %s --help)", p.name, name, p.name))
			continue
		}
		if !hasValue && !f.isBool {
			i++ // its value
			if i == len(args) {
				errs = append(errs, fmt.Sprintf("%s: --%s needs a value", p.name, name))
			}
		}
	}
	return errs
}

// flagValue is the value args give flag, if any.
func flagValue(args []string, flag string) (string, bool) {
	for i, a := range args {
		name, v, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != flag {
			continue
		}
		if hasValue {
			return v, true
		}
		if i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// duration is the mqttgw duration flag's value for c: flag, then
// environment, then the default.
func (ps programs) duration(t *testing.T, c command, flag string) (time.Duration, error) {
	t.Helper()
	_, args := ps.program(c.argv)
	v, ok := flagValue(args, flag)
	if !ok {
		v = c.env["MQTTGW_"+strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))]
	}
	if v == "" {
		return ps.gatewayDefault(t, flag), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: --%s %q: %w", c.where, flag, v, err)
	}
	return d, nil
}

// yamlFile is one parsed *.yaml/*.yml file under deploy/.
type yamlFile struct {
	path string
	docs []map[string]any
}

func loadYAML(t *testing.T) []yamlFile {
	t.Helper()
	var files []yamlFile
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || (filepath.Ext(p) != ".yaml" && filepath.Ext(p) != ".yml") {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		yf := yamlFile{path: p}
		dec := yaml.NewDecoder(f)
		for i := 1; ; i++ {
			var doc any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: document %d: %w", p, i, err)
			}
			if doc == nil {
				continue // empty document, e.g. after a trailing ---
			}
			m, ok := doc.(map[string]any)
			if !ok {
				return fmt.Errorf("%s: document %d is a %T, not a mapping", p, i, doc)
			}
			yf.docs = append(yf.docs, m)
		}
		if len(yf.docs) == 0 {
			return fmt.Errorf("%s: no YAML documents", p)
		}
		files = append(files, yf)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no *.yaml files under deploy/")
	}
	return files
}

// Small accessors for decoded YAML.
func mapOf(v any) map[string]any { m, _ := v.(map[string]any); return m }
func listOf(v any) []any         { l, _ := v.([]any); return l }
func str(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// strings of a YAML list, or of a string split at spaces (compose's
// string form of entrypoint, command and healthcheck test).
func argvOf(v any) []string {
	if s, ok := v.(string); ok {
		return strings.Fields(s)
	}
	var out []string
	for _, e := range listOf(v) {
		out = append(out, str(e))
	}
	return out
}

// envOf reads compose's environment (a map or a list of K=V) or a
// Kubernetes env list. A variable set from a Secret or field is "".
func envOf(v any) map[string]string {
	env := map[string]string{}
	for k, val := range mapOf(v) {
		env[k] = str(val)
	}
	for _, e := range listOf(v) {
		if s, ok := e.(string); ok {
			k, val, _ := strings.Cut(s, "=")
			env[k] = val
			continue
		}
		m := mapOf(e)
		env[str(m["name"])] = str(m["value"])
	}
	return env
}

// envNames are all MQTTGW_* words anywhere in a decoded YAML tree.
func envNames(v any, add func(string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			envNames(k, add)
			envNames(e, add)
		}
	case []any:
		for _, e := range v {
			envNames(e, add)
		}
	case string:
		for _, w := range envWord.FindAllString(v, -1) {
			add(w)
		}
	}
}

// isOurImage: built from deploy/Dockerfile, or an image named mqttgw.
func isOurImage(image string, build any) bool {
	if b := mapOf(build); b != nil && strings.HasSuffix(str(b["dockerfile"]), "deploy/Dockerfile") {
		return true
	}
	return strings.Contains(image, "mqttgw")
}

// TestFlagsAndEnvExist checks every MQTTGW_* variable and every flag given
// to the image's binaries against their --help.
func TestFlagsAndEnvExist(t *testing.T) {
	ps := loadPrograms(t)
	files := loadYAML(t)
	df := loadDockerfile(t)

	var cmds []command
	envs := map[string][]string{} // name → where
	addEnv := func(where string) func(string) {
		return func(name string) {
			if !slices.Contains(envs[name], where) {
				envs[name] = append(envs[name], where)
			}
		}
	}
	for _, f := range files {
		for _, doc := range f.docs {
			envNames(doc, addEnv(f.path))
		}
	}
	for _, s := range composeServices(files) {
		if s.run.argv != nil {
			cmds = append(cmds, s.run)
		}
		cmds = append(cmds, s.checks...)
	}
	for _, p := range podSpecs(files) {
		cmds = append(cmds, p.containers()...)
	}
	cmds = append(cmds, df.commands(t)...)
	for _, w := range envWord.FindAllString(df.text, -1) {
		addEnv("Dockerfile")(w)
	}
	for _, name := range []string{"nginx.conf", "README.md"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range envWord.FindAllString(string(b), -1) {
			addEnv(name)(w)
		}
	}

	if len(envs) == 0 {
		t.Error("no MQTTGW_* variable found anywhere: is the walk broken?")
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range envs {
			if !yield(k) {
				return
			}
		}
	}) {
		if _, ok := ps.gateway.env[name]; !ok {
			t.Errorf("%s: %s is not a variable mqttgw reads (see mqttgw --help)", strings.Join(envs[name], ", "), name)
		}
	}

	checked := map[string]int{}
	for _, c := range cmds {
		p, args := ps.program(c.argv)
		if p == nil {
			continue
		}
		checked[p.name]++
		for _, e := range checkArgs(p, args) {
			t.Errorf("%s: %s", c.where, e)
		}
	}
	// The walk must have found what the files are known to hold.
	for _, p := range []*program{ps.gateway, ps.healthcheck, ps.temperature} {
		if checked[p.name] == 0 {
			t.Errorf("found no command line that runs %q: is the walk broken?", p.name)
		}
	}
}
