package deploy_test

// Dockerfile: the image that compose.yaml and kubernetes/*.yaml run.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

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
