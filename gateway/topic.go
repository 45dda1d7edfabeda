package gateway

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxStringLen is the longest UTF-8 string MQTT can carry [MQTT-1.5.4-1].
const maxStringLen = 65535

// CheckString reports why s can't travel as an MQTT UTF-8 string without a
// strict peer dropping the connection, or nil if it can: s must be valid
// UTF-8 without NUL [MQTT-1.5.4-2], control characters or Unicode
// non-characters [MQTT-1.5.4-3], and at most 65,535 bytes long.
func CheckString(s string) error {
	if len(s) > maxStringLen {
		return fmt.Errorf("is %d bytes long, more than the %d that MQTT allows", len(s), maxStringLen)
	}
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			return fmt.Errorf("is not valid UTF-8 (at byte %d)", i)
		case r == 0:
			return fmt.Errorf("contains a NUL character (at byte %d)", i)
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			return fmt.Errorf("contains the control character %U (at byte %d)", r, i)
		case isNonCharacter(r):
			return fmt.Errorf("contains the Unicode non-character %U (at byte %d)", r, i)
		}
	}
	return nil
}

// isNonCharacter reports whether r is one of Unicode's 66 non-characters.
func isNonCharacter(r rune) bool {
	return (r >= 0xFDD0 && r <= 0xFDEF) || r&0xFFFE == 0xFFFE
}

// CheckTopic reports why name can't be a request topic, or nil if it can.
// Beyond CheckString, a topic name must be non-empty and free of wildcards
// [MQTT-3.3.2-2], must not start with '$' (reserved for the broker
// [MQTT-4.7.2-1]), and must not fall under reservedPrefix, where the
// gateways read their replies.
func CheckTopic(name, reservedPrefix string) error {
	if name == "" {
		return fmt.Errorf("topic is empty")
	}
	if err := CheckString(name); err != nil {
		return fmt.Errorf("topic %w", err)
	}
	if i := strings.IndexAny(name, "+#"); i >= 0 {
		return fmt.Errorf("topic contains the wildcard %q (at byte %d); a request goes to one topic name, not a filter", name[i], i)
	}
	if name[0] == '$' {
		return fmt.Errorf("topic starts with '$', which MQTT reserves for the broker")
	}
	if reservedPrefix != "" && Under(name, reservedPrefix) {
		return fmt.Errorf("topic is under %q, where gateways receive replies", reservedPrefix)
	}
	return nil
}

// Under reports whether topic (or filter) is prefix itself or lies below
// it: the one test of whether something touches the response prefix.
func Under(topic, prefix string) bool {
	return topic == prefix || (strings.HasPrefix(topic, prefix) && topic[len(prefix)] == '/')
}

// CheckFilter reports why filter can't be a topic filter in an auth or
// users file, or nil if it can: an MQTT string (CheckString), not empty
// [MQTT-4.7.3-1], with each wildcard a whole level and '#' only last
// [MQTT-4.7.1-2] [MQTT-4.7.1-3]. (Brokers such as mochi take "a+/b" as a
// literal level; in a grant it would not mean what its author thinks.)
func CheckFilter(filter string) error {
	if filter == "" {
		return fmt.Errorf("is empty")
	}
	if err := CheckString(filter); err != nil {
		return err
	}
	levels := strings.Split(filter, "/")
	for i, level := range levels {
		switch {
		case level == "#" && i != len(levels)-1:
			return fmt.Errorf(`has "#" before its last level`)
		case level != "+" && level != "#" && strings.ContainsAny(level, "+#"):
			return fmt.Errorf(`has a wildcard that is not a whole level ("+" and "#" must stand alone between slashes)`)
		}
	}
	return nil
}

// MatchFilter reports whether the topic filter matches the topic name, as
// MQTT defines it [MQTT-4.7]: "+" matches one level, "#" (last) matches
// any number of levels, including none, so "a/#" matches "a" too
// [MQTT-4.7.1-2]; a filter starting with a wildcard never matches a topic
// starting with '$' [MQTT-4.7.2-1]. It is the one matcher of the grants in
// the API keys file and the embedded broker's users file.
func MatchFilter(filter, topic string) bool {
	if topic == "" {
		return false
	}
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		level, rest, more := strings.Cut(filter, "/")
		if level == "#" && !more {
			return true
		}
		tlevel, trest, tmore := strings.Cut(topic, "/")
		switch {
		case level != "+" && level != tlevel:
			return false
		case !more && !tmore:
			return true
		case !more:
			return false
		case !tmore:
			// The topic ends; only a last "#" may match nothing more.
			return rest == "#"
		}
		filter, topic = rest, trest
	}
}

// MatchAny reports whether one of filters matches the topic name, as
// MatchFilter does: the question every grant asks.
func MatchAny(filters []string, topic string) bool {
	for _, f := range filters {
		if MatchFilter(f, topic) {
			return true
		}
	}
	return false
}

// IsSharedFilter reports whether filter subscribes to a shared
// subscription group ("$share/<group>/<filter>") [MQTT-4.8.2]. Like the
// embedded broker (mochi), it takes "$share" in any case.
func IsSharedFilter(filter string) bool {
	first, _, _ := strings.Cut(filter, "/")
	return strings.EqualFold(first, "$share")
}

// StripShare removes a "$share/<group>/" prefix from a filter.
func StripShare(filter string) string {
	if !IsSharedFilter(filter) {
		return filter
	}
	_, rest, _ := strings.Cut(filter, "/")
	if _, f, ok := strings.Cut(rest, "/"); ok {
		return f
	}
	return filter
}
