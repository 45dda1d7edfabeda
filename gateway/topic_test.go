package gateway

import (
	"strings"
	"testing"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
)

func TestCheckTopic(t *testing.T) {
	const prefix = "mqttgw/reply"
	tests := []struct {
		name  string
		topic string
		want  string // substring of the error; "" = valid
	}{
		{"simple", "service/temperature/query", ""},
		{"single level", "a", ""},
		{"empty levels", "a//b/", ""},
		{"unicode", "café/ünïcødé/日本", ""},
		{"replacement char is valid", "a/\uFFFD", ""},
		{"similar to prefix", "mqttgw/replyx", ""},
		{"prefix parent", "mqttgw", ""},
		{"max length", strings.Repeat("a", 65535), ""},
		{"empty", "", "empty"},
		{"plus", "a/+/b", "wildcard"},
		{"hash", "a/#", "wildcard"},
		{"plus inside level", "a+b", "wildcard"},
		{"NUL", "a\x00b", "NUL"},
		{"dollar", "$SYS/broker", "'$'"},
		{"dollar share", "$share/g/t", "'$'"},
		{"invalid utf8", "a\xffb", "UTF-8"},
		{"surrogate encoded", "a\xed\xa0\x80", "UTF-8"},
		{"control C0", "a\x01", "control"},
		{"tab", "a\tb", "control"},
		{"DEL", "a\x7f", "control"},
		{"control C1", "a\u0085", "control"},
		{"noncharacter FDD0", "a\uFDD0", "non-character"},
		{"noncharacter FFFE", "a\uFFFE", "non-character"},
		{"noncharacter plane 16", "a\U0010FFFF", "non-character"},
		{"too long", strings.Repeat("a", 65536), "65535"},
		{"reserved prefix", "mqttgw/reply", "mqttgw/reply"},
		{"under reserved prefix", "mqttgw/reply/abc", "mqttgw/reply"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckTopic(tt.topic, prefix)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("CheckTopic(%q) = %v, want nil", tt.topic, err)
			case tt.want != "" && err == nil:
				t.Fatalf("CheckTopic(%q) = nil, want error containing %q", tt.topic, tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("CheckTopic(%q) = %v, want it to contain %q", tt.topic, err, tt.want)
			}
		})
	}
}

// FuzzCheckTopic checks that every topic the gateway accepts is one that
// mochi itself accepts for publishing, and that it is valid UTF-8 free of
// the characters that make strict peers drop the connection.
func FuzzCheckTopic(f *testing.F) {
	for _, s := range []string{"a/b", "$SYS", "a/+", "#", "", "a\x00", "\xff", "mqttgw/reply/x", "\uFFFE", "a//b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		if CheckTopic(topic, DefaultResponsePrefix) != nil {
			return
		}
		if !mqtt.IsValidFilter(topic, true) {
			t.Fatalf("accepted %q, which mochi refuses as a topic name", topic)
		}
		if !utf8.ValidString(topic) || strings.ContainsAny(topic, "\x00+#") || topic == "" || len(topic) > 65535 {
			t.Fatalf("accepted %q", topic)
		}
		for _, r := range topic {
			if r < 0x20 || (r >= 0x7f && r <= 0x9f) || isNonCharacter(r) {
				t.Fatalf("accepted %q with %U", topic, r)
			}
		}
		if under(topic, DefaultResponsePrefix) {
			t.Fatalf("accepted %q under the response prefix", topic)
		}
	})
}

func TestCheckFilter(t *testing.T) {
	for filter, want := range map[string]string{
		"a/b": "", "a/+/c": "", "a/#": "", "#": "", "+": "", "+/+/#": "", "$SYS/#": "",
		"":       "empty",
		"a/#/b":  `"#" before`,
		"a+/b":   "whole level",
		"a/b#":   "whole level",
		"a/\x00": "NUL",
		"a/\xff": "UTF-8",
	} {
		err := CheckFilter(filter)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("CheckFilter(%q) = %v, want %q", filter, err, want)
		}
	}
}
