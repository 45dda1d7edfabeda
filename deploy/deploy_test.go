package deploy_test

// These tests keep the deployment files honest: every MQTTGW_* variable and
// every --flag they hand to mqttgw or temperature-service must be one the
// real binaries list in --help, and the timeouts around the gateway (nginx,
// compose, Kubernetes) must leave room for what the gateway may take.

import (
	"encoding/json"
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
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"
)

// binDir holds mqttgw and temperature-service, built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "mqttgw-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// `go test` puts its own go first in PATH.
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/mqttgw", "./cmd/temperature-service")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	binDir = dir
	return m.Run()
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
	bin := filepath.Join(binDir, name)
	out, err := exec.Command(bin, args...).CombinedOutput()
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

// composeUnescape undoes compose's "$$" → "$".
func composeUnescape(argv []string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = strings.ReplaceAll(a, "$$", "$")
	}
	return out
}

// isOurImage: built from deploy/Dockerfile, or an image named mqttgw.
func isOurImage(image string, build any) bool {
	if b := mapOf(build); b != nil && strings.HasSuffix(str(b["dockerfile"]), "deploy/Dockerfile") {
		return true
	}
	return strings.Contains(image, "mqttgw")
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

// podSpec is a Kubernetes workload's pod spec, with its replica count.
type podSpec struct {
	file, kind, name string
	replicas         int
	spec             map[string]any
}

func podSpecs(files []yamlFile) []podSpec {
	var out []podSpec
	for _, f := range files {
		for _, doc := range f.docs {
			kind := str(doc["kind"])
			spec := mapOf(doc["spec"])
			p := podSpec{file: f.path, kind: kind, name: str(mapOf(doc["metadata"])["name"]), replicas: 1}
			switch kind {
			case "Pod":
				p.spec = spec
			case "Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job":
				p.spec = mapOf(mapOf(spec["template"])["spec"])
				if r, ok := spec["replicas"].(int); ok {
					p.replicas = r
				}
				if kind == "DaemonSet" {
					p.replicas = 2 // one per node: always several
				}
			case "CronJob":
				p.spec = mapOf(mapOf(mapOf(mapOf(spec["jobTemplate"])["spec"])["template"])["spec"])
			default:
				continue
			}
			out = append(out, p)
		}
	}
	return out
}

// containers are a pod's commands: each container's command line and
// exec probes, with its environment.
func (p podSpec) containers() []command {
	var out []command
	for _, key := range []string{"initContainers", "containers"} {
		for _, c := range listOf(p.spec[key]) {
			c := mapOf(c)
			where := fmt.Sprintf("%s: %s %s, container %s", p.file, p.kind, p.name, str(c["name"]))
			env := envOf(c["env"])
			argv := argvOf(c["command"])
			if len(argv) == 0 && isOurImage(str(c["image"]), nil) {
				argv = []string{"/mqttgw"}
			}
			argv = append(argv, argvOf(c["args"])...)
			out = append(out, command{where: where, argv: argv, env: env})
			for _, probe := range []string{"startupProbe", "readinessProbe", "livenessProbe"} {
				if exec := mapOf(mapOf(c[probe])["exec"]); exec != nil {
					out = append(out, command{where: where + " " + probe, argv: argvOf(exec["command"]), env: env})
				}
			}
		}
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

// dockerfile is the parsed deploy/Dockerfile.
type dockerfile struct {
	text   string
	stages []stage
}

type stage struct {
	from         string
	instructions [][2]string // {INSTRUCTION, rest}
}

func loadDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := dockerfile{text: string(b)}
	var logical strings.Builder
	flush := func() {
		line := strings.TrimSpace(logical.String())
		logical.Reset()
		if line == "" {
			return
		}
		instr, rest, _ := strings.Cut(line, " ")
		instr = strings.ToUpper(instr)
		rest = strings.TrimSpace(rest)
		if instr == "FROM" {
			df.stages = append(df.stages, stage{from: rest})
			return
		}
		if len(df.stages) == 0 {
			if instr != "ARG" {
				t.Fatalf("Dockerfile: %s before the first FROM", instr)
			}
			return
		}
		s := &df.stages[len(df.stages)-1]
		s.instructions = append(s.instructions, [2]string{instr, rest})
	}
	for line := range strings.Lines(df.text) {
		line = strings.TrimRight(line, "\r\n")
		if trimmed := strings.TrimSpace(line); strings.HasPrefix(trimmed, "#") {
			continue // comments and parser directives, also inside a continuation
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			logical.WriteString(cont + " ")
			continue
		}
		logical.WriteString(line)
		flush()
	}
	flush()
	if len(df.stages) == 0 {
		t.Fatal("Dockerfile: no FROM")
	}
	return df
}

// dockerArgv is the argv of an exec-form (JSON) or shell-form command.
func dockerArgv(t *testing.T, s string) []string {
	t.Helper()
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		var argv []string
		if err := json.Unmarshal([]byte(s), &argv); err != nil {
			t.Errorf("Dockerfile: %s is not a JSON string array: %v", s, err)
		}
		return argv
	}
	return strings.Fields(s)
}

// final is the last stage's instructions named instr, in order.
func (df dockerfile) final(instr string) []string {
	var out []string
	for _, in := range df.stages[len(df.stages)-1].instructions {
		if in[0] == instr {
			out = append(out, in[1])
		}
	}
	return out
}

// healthcheckArgv is the command of HEALTHCHECK [OPTIONS] CMD command.
func healthcheckArgv(t *testing.T, rest string) []string {
	t.Helper()
	fields := strings.Fields(rest)
	for i, f := range fields {
		if strings.EqualFold(f, "CMD") {
			return dockerArgv(t, strings.Join(fields[i+1:], " "))
		}
		if !strings.HasPrefix(f, "--") {
			break
		}
	}
	return nil
}

// commands are the Dockerfile's final-stage command lines: the default
// run (ENTRYPOINT + CMD) and the HEALTHCHECK.
func (df dockerfile) commands(t *testing.T) []command {
	t.Helper()
	var out []command
	var argv []string
	if e := df.final("ENTRYPOINT"); len(e) > 0 {
		argv = dockerArgv(t, e[len(e)-1])
	}
	if c := df.final("CMD"); len(c) > 0 {
		argv = append(argv, dockerArgv(t, c[len(c)-1])...)
	}
	out = append(out, command{where: "Dockerfile: ENTRYPOINT/CMD", argv: argv})
	for _, hc := range df.final("HEALTHCHECK") {
		if a := healthcheckArgv(t, hc); a != nil {
			out = append(out, command{where: "Dockerfile: HEALTHCHECK", argv: a})
		}
	}
	return out
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

// TestDockerfile checks the image: both binaries built, non-root, a
// HEALTHCHECK, mqttgw as the entrypoint.
func TestDockerfile(t *testing.T) {
	df := loadDockerfile(t)
	final := df.stages[len(df.stages)-1]

	for _, cmd := range []string{"./cmd/mqttgw", "./cmd/temperature-service"} {
		if !strings.Contains(df.text, cmd) {
			t.Errorf("Dockerfile does not build %s", cmd)
		}
	}
	for _, m := range regexp.MustCompile(`\./cmd/[\w-]+`).FindAllString(df.text, -1) {
		if _, err := os.Stat(filepath.Join("..", m)); err != nil {
			t.Errorf("Dockerfile builds %s: %v", m, err)
		}
	}

	user := ""
	if u := df.final("USER"); len(u) > 0 {
		user = u[len(u)-1]
	}
	name, _, _ := strings.Cut(user, ":")
	switch {
	case name == "root" || name == "0":
		t.Errorf("Dockerfile: final stage runs as USER %s", user)
	case name == "" && !strings.HasSuffix(strings.Fields(final.from)[0], ":nonroot"):
		t.Errorf("Dockerfile: final stage (FROM %s) has no USER and is not a :nonroot image", final.from)
	}

	hcs := df.final("HEALTHCHECK")
	if len(hcs) == 0 {
		t.Error("Dockerfile: final stage has no HEALTHCHECK")
	}
	for _, hc := range hcs {
		argv := healthcheckArgv(t, hc)
		if len(argv) < 2 || argv[0] != "/mqttgw" || argv[1] != "healthcheck" {
			t.Errorf("Dockerfile: HEALTHCHECK %s: want CMD [\"/mqttgw\", \"healthcheck\", …] (no shell or curl in distroless)", hc)
		}
	}

	e := df.final("ENTRYPOINT")
	if len(e) == 0 || !slices.Equal(dockerArgv(t, e[len(e)-1]), []string{"/mqttgw"}) {
		t.Errorf("Dockerfile: final ENTRYPOINT = %q, want [\"/mqttgw\"]", e)
	}
	for _, c := range df.final("COPY") {
		fields := strings.Fields(c)
		if dst := fields[len(fields)-1]; strings.HasPrefix(c, "--from=") && !slices.Contains([]string{"/mqttgw", "/temperature-service"}, dst) {
			t.Errorf("Dockerfile: unexpected final-stage COPY %s", c)
		}
	}
	if !strings.Contains(strings.Join(df.final("EXPOSE"), " "), "8080") {
		t.Error("Dockerfile: final stage does not EXPOSE 8080")
	}
}

// nginxTimeout parses an nginx time ("75s", "75", "1m30s", "500ms").
func nginxTimeout(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(s)
}

// TestNginx checks nginx.conf against the gateways of compose.yaml: every
// gateway is an upstream server, and nginx waits longer than a request may.
func TestNginx(t *testing.T) {
	ps := loadPrograms(t)
	b, err := os.ReadFile("nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	var conf strings.Builder
	for line := range strings.Lines(string(b)) {
		line, _, _ = strings.Cut(line, "#")
		conf.WriteString(line + "\n")
	}
	text := conf.String()

	// The longest a request may wait: the largest --max-timeout of the
	// gateways nginx proxies to.
	gateways := map[string]string{} // service → its HTTP port
	maxTimeout := time.Duration(0)
	for _, s := range composeServices(loadYAML(t)) {
		if p, _ := ps.program(s.run.argv); p != ps.gateway {
			continue
		}
		d, err := ps.duration(t, s.run, "max-timeout")
		if err != nil {
			t.Error(err)
		}
		maxTimeout = max(maxTimeout, d)
		_, args := ps.program(s.run.argv)
		addr, ok := flagValue(args, "http-addr")
		if !ok {
			addr = s.run.env["MQTTGW_HTTP_ADDR"]
		}
		if addr == "" {
			addr = ps.gateway.flags["http-addr"].def
		}
		_, port, _ := strings.Cut(addr, ":")
		gateways[s.name] = port
	}
	if len(gateways) < 2 {
		t.Errorf("compose.yaml runs %d gateway services, want at least 2 behind nginx", len(gateways))
	}

	timeouts := regexp.MustCompile(`\bproxy_read_timeout\s+(\S+?)\s*;`).FindAllStringSubmatch(text, -1)
	if len(timeouts) == 0 {
		t.Errorf("nginx.conf sets no proxy_read_timeout: nginx's default 60s is not above the gateways' --max-timeout %v", maxTimeout)
	}
	for _, m := range timeouts {
		d, err := nginxTimeout(m[1])
		if err != nil {
			t.Errorf("nginx.conf: proxy_read_timeout %s: %v", m[1], err)
			continue
		}
		if d <= maxTimeout {
			t.Errorf("nginx.conf: proxy_read_timeout %s is not above the gateways' --max-timeout %v: nginx would cut long ?timeout requests", m[1], maxTimeout)
		}
	}

	servers := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*server\s+([\w.-]+):(\d+)\b`).FindAllStringSubmatch(text, -1) {
		servers[m[1]] = true
		port, ok := gateways[m[1]]
		switch {
		case !ok:
			t.Errorf("nginx.conf: upstream server %s is no gateway service of compose.yaml", m[1])
		case port != m[2]:
			t.Errorf("nginx.conf: upstream server %s:%s, but the gateway listens on port %s", m[1], m[2], port)
		}
	}
	for name := range gateways {
		if !servers[name] {
			t.Errorf("nginx.conf: gateway service %s is not an upstream server", name)
		}
	}
}

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

// TestKubernetes checks the workloads that run mqttgw: unique instance ids
// per replica and a termination grace period that covers the drain.
func TestKubernetes(t *testing.T) {
	ps := loadPrograms(t)
	gateways := 0
	for _, p := range podSpecs(loadYAML(t)) {
		for _, c := range p.containers() {
			if prog, _ := ps.program(c.argv); prog != ps.gateway {
				continue
			}
			gateways++
			_, args := ps.program(c.argv)
			if id, ok := flagValue(args, "instance-id"); ok && p.replicas > 1 {
				t.Errorf("%s: --instance-id %q is the same in all %d replicas", c.where, id, p.replicas)
			}
			if id := c.env["MQTTGW_INSTANCE_ID"]; id != "" && p.replicas > 1 {
				t.Errorf("%s: MQTTGW_INSTANCE_ID %q is the same in all %d replicas: take it from metadata.name", c.where, id, p.replicas)
			}

			grace, err := ps.duration(t, c, "shutdown-grace")
			if err != nil {
				t.Error(err)
				continue
			}
			delay, err := ps.duration(t, c, "shutdown-delay")
			if err != nil {
				t.Error(err)
				continue
			}
			term := 30 * time.Second // Kubernetes' default
			if v, ok := p.spec["terminationGracePeriodSeconds"].(int); ok {
				term = time.Duration(v) * time.Second
			}
			if term <= delay+grace {
				t.Errorf("%s: terminationGracePeriodSeconds %v is not above --shutdown-delay %v + --shutdown-grace %v", c.where, term, delay, grace)
			}
		}
	}
	if gateways == 0 {
		t.Error("no Kubernetes workload runs mqttgw")
	}
}
