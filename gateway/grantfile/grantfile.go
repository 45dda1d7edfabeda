// Package grantfile loads the YAML files that grant rights — the HTTP
// API's keys file and the embedded broker's users file — alike: one list
// under a top-level key, each entry decoded on its own with unknown fields
// refused, errors that name the entry's line, and a reload that swaps the
// whole file in at once or keeps the old one.
//
// Secrets never reach an error from here: decoding errors name fields and
// lines, not values, and the callers' own checks must not echo them
// either (a password pasted where its hash belongs would end up in logs).
package grantfile

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"go.yaml.in/yaml/v4"
)

// Entry is one parsed entry of the list, with where it stands.
type Entry[T any] struct {
	Value T
	// Where names the entry in messages: its line, position and name,
	// e.g. `line 4: key 2 ("ops")`.
	Where string
	Line  int
}

// Parse decodes data, a YAML document with a list under listKey, entry by
// entry into E (unknown fields refused), and builds each with build. kind
// names an entry in messages ("key", "user"); name returns an entry's name
// for them, "" for none. A document without listKey is an error (a
// truncated or wrong file must not grant nothing silently, nor
// everything); an explicit empty list is valid.
func Parse[E, T any](data []byte, listKey, kind string, name func(E) string, build func(E) (T, error)) ([]Entry[T], error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("file is empty; it needs a %q list", listKey)
	}
	var doc map[string]yaml.Node
	if err := yaml.Load(data, &doc); err != nil {
		return nil, fmt.Errorf("not a YAML document with a %q list: %w", listKey, err)
	}
	for k := range doc {
		if k != listKey {
			return nil, fmt.Errorf("unknown top-level field %q; the file holds a %q list", k, listKey)
		}
	}
	list, ok := doc[listKey]
	if !ok || list.Kind == yaml.ScalarNode && list.Tag == "!!null" {
		return nil, fmt.Errorf("no %q list", listKey)
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: %q must be a list", list.Line, listKey)
	}
	var nodes []yaml.Node
	if err := list.Load(&nodes); err != nil {
		return nil, fmt.Errorf("line %d: %w", list.Line, err)
	}
	out := make([]Entry[T], 0, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		var e E
		err := n.Load(&e, yaml.WithKnownFields())
		where := fmt.Sprintf("line %d: %s %d", n.Line, kind, i+1)
		if err != nil {
			var lenient E
			_ = n.Load(&lenient) // for the name in the message, if it has one
			if nm := name(lenient); nm != "" {
				where += fmt.Sprintf(" (%q)", nm)
			}
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if nm := name(e); nm != "" {
			where += fmt.Sprintf(" (%q)", nm)
		}
		v, err := build(e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		out = append(out, Entry[T]{Value: v, Where: where, Line: n.Line})
	}
	return out, nil
}

// File is a grant file on disk and its parsed content, which Reload
// replaces as a whole.
type File[T any] struct {
	what, path string
	parse      func([]byte) (T, error)
	cur        atomic.Pointer[T]
	// reload serializes Reload, so that an older read never replaces a
	// newer one.
	reload sync.Mutex
}

// Open reads and parses the file at path. what names the file in errors
// ("auth file"), which also name its path.
func Open[T any](what, path string, parse func([]byte) (T, error)) (*File[T], error) {
	f := &File[T]{what: what, path: path, parse: parse}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload reads the file again. On success the new content is in force
// for every later Current; on error the old one stays, and the error
// names the file and the problem.
func (f *File[T]) Reload() error {
	f.reload.Lock()
	defer f.reload.Unlock()
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", f.what, err)
	}
	v, err := f.parse(data)
	if err != nil {
		return fmt.Errorf("%s %s: %w", f.what, f.path, err)
	}
	f.cur.Store(&v)
	return nil
}

// Current is the content in force.
func (f *File[T]) Current() T { return *f.cur.Load() }
