package grantfile_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
	"github.com/mqttgw/mqttgw/gateway/grantfile"
)

type entry struct {
	Name   string `yaml:"name"`
	Secret string `yaml:"secret"`
}

func parse(data []byte) ([]grantfile.Entry[string], error) {
	return grantfile.Parse(data, "things", "thing", func(e entry) string { return e.Name }, func(e entry) (string, error) {
		if e.Name == "" {
			return "", errors.New("name is empty")
		}
		return e.Name, nil
	})
}

func TestParse(t *testing.T) {
	got, err := parse([]byte("things:\n  - name: a\n  - name: b\n    secret: x\n"))
	if err != nil || len(got) != 2 || got[1].Value != "b" || got[1].Line != 3 || got[1].Where != `line 3: thing 2 ("b")` {
		t.Fatalf("got %+v, %v", got, err)
	}
	if got, err := parse([]byte("things: []\n")); err != nil || len(got) != 0 {
		t.Fatalf("an empty list: %+v, %v", got, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"", "empty"},
		{"   \n", "empty"},
		{"other: []\n", `unknown top-level field "other"`},
		{"thing: []\n", `unknown top-level field "thing"`},
		{"# nothing\n{}\n", `no "things" list`},
		{"things:\n", `no "things" list`},
		{"things: 3\n", "must be a list"},
		{"things:\n  - name: a\n    colour: red\n", `line 2: thing 1 ("a")`},
		{"things:\n  - name: a\n  - secret: hunter2\n", "line 3: thing 2: name is empty"},
		{"things:\n  - [1, 2]\n", "line 2: thing 1"},
	} {
		_, err := parse([]byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parse(%q) = %v, want an error with %q", tt.yaml, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("parse(%q): error %q shows a value", tt.yaml, err)
		}
	}
}

func TestFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "things.yaml")
	gatewaytest.WriteFile(t, path, "things:\n  - name: a\n")
	f, err := grantfile.Open("things file", path, parse)
	if err != nil || len(f.Current()) != 1 {
		t.Fatalf("Open: %v", err)
	}
	gatewaytest.WriteFile(t, path, "things:\n  - name: a\n  - name: b\n")
	if err := f.Reload(); err != nil || len(f.Current()) != 2 {
		t.Fatalf("Reload: %v, %d entries", err, len(f.Current()))
	}
	// A broken file keeps the old content, and the error names the file.
	gatewaytest.WriteFile(t, path, "things:\n  - nom: c\n")
	if err := f.Reload(); err == nil || !strings.Contains(err.Error(), "things file "+path+": line 2") || len(f.Current()) != 2 {
		t.Fatalf("Reload of a broken file: %v, %d entries", err, len(f.Current()))
	}
	os.Remove(path)
	if err := f.Reload(); err == nil || len(f.Current()) != 2 {
		t.Fatalf("Reload of a missing file: %v", err)
	}
	if _, err := grantfile.Open("things file", path, parse); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open of a missing file: %v", err)
	}
}
