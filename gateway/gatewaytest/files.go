package gatewaytest

import (
	"os"
	"testing"
)

// WriteFile writes data to path atomically (a temporary file, then a
// rename), so that a reload running at the same time never reads half a
// file.
func WriteFile(tb testing.TB, path, data string) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// PublicTempDir is a temporary directory every user can read, removed at
// cleanup: mosquitto and nginx started as root read their files after
// dropping to a user of their own, who can't enter t.TempDir()'s parent.
func PublicTempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "mqttgw-test-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}
