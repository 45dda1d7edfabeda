package gateway

import (
	"strings"
	"testing"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
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
		if Under(topic, DefaultResponsePrefix) {
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

func TestMatchFilter(t *testing.T) {
	for _, tt := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"+/b", "a/b", true},
		{"+", "a", true},
		{"+", "a/b", false},
		{"+", "/a", false},
		{"+/+", "/a", true},
		{"#", "a/b/c", true},
		{"#", "/", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"a/+/#", "a/b", true},
		{"a/+/#", "a/b/c/d", true},
		{"a/+/#", "a", false},
		{"a//b", "a//b", true},
		{"a/+/b", "a//b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a", "", false},
		{"#", "", false},
	} {
		if got := MatchFilter(tt.filter, tt.topic); got != tt.want {
			t.Errorf("MatchFilter(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestStripShare(t *testing.T) {
	for _, tt := range []struct {
		in, stripped string
		shared       bool
	}{
		{"$share/g/a/b", "a/b", true},
		{"$SHARE/g/#", "#", true},
		{"$share/g", "$share/g", true},
		{"a/b", "a/b", false},
		{"$SYS/x", "$SYS/x", false},
		{"$shared/g/x", "$shared/g/x", false},
	} {
		if got := StripShare(tt.in); got != tt.stripped {
			t.Errorf("StripShare(%q) = %q, want %q", tt.in, got, tt.stripped)
		}
		if got := IsSharedFilter(tt.in); got != tt.shared {
			t.Errorf("IsSharedFilter(%q) = %v, want %v", tt.in, got, tt.shared)
		}
	}
}

// FuzzMatchFilter: MatchFilter agrees with the embedded broker's own
// matcher (mochi's topic index), but for one place where mochi departs
// from MQTT: it doesn't let "x/+/#" match the parent level "x/y"
// [MQTT-4.7.1-2], which MatchFilter does.
func FuzzMatchFilter(f *testing.F) {
	for _, s := range [][2]string{{"a/+/#", "a/b"}, {"#", "$SYS/x"}, {"a/#", "a"}, {"+/+", "/a"}, {"a//b", "a//b"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if CheckFilter(filter) != nil || IsSharedFilter(filter) || CheckTopic(topic, "") != nil && !strings.HasPrefix(topic, "$") {
			return
		}
		if strings.ContainsAny(topic, "+#") || CheckString(topic) != nil || topic == "" {
			return
		}
		idx := mqtt.NewTopicsIndex()
		idx.Subscribe("c", packets.Subscription{Filter: filter})
		_, mochi := idx.Subscribers(topic).Subscriptions["c"]
		got := MatchFilter(filter, topic)
		if got == mochi {
			return
		}
		// The parent of "…/+/#": MQTT matches it, mochi doesn't.
		if parent, ok := strings.CutSuffix(filter, "/#"); ok && got && !mochi && strings.HasSuffix(parent, "+") && MatchFilter(parent, topic) {
			return
		}
		t.Fatalf("MatchFilter(%q, %q) = %v, mochi says %v", filter, topic, got, mochi)
	})
}
