package listener

import (
	"strings"
	"testing"
	"time"

	"mailsync/event"
)

// TestPoisonRules: which entries cannot be published. The real-server
// tests (poison_test.go) cover the cap and the size; slapd refuses values
// that are not UTF-8 in the mail schema's syntaxes, so that rule is driven
// here.
func TestPoisonRules(t *testing.T) {
	l := &Listener{cfg: Config{MaxValueBytes: 100}, maxEvent: 2000}
	for _, tc := range []struct {
		name string
		a    event.Attrs
		attr string // "" when publishable
	}{
		{"plain", event.Attrs{event.AttrUID: {"alice"}, event.AttrPrimaryAddress: {"alice@example.org"}}, ""},
		{"at the cap", event.Attrs{event.AttrCN: {strings.Repeat("c", 100)}}, ""},
		{"over the cap", event.Attrs{event.AttrUID: {"a"}, event.AttrCN: {strings.Repeat("c", 101)}}, event.AttrCN},
		{"not UTF-8", event.Attrs{event.AttrUID: {"a"}, event.AttrAlternativeAddress: {"ok@example.org", "b\xffad@example.org"}}, event.AttrAlternativeAddress},
	} {
		p := l.poisonValues("u", "uid=a", tc.a)
		if got := ""; p != nil {
			got = p.Attr
			if got != tc.attr {
				t.Errorf("%s: poison %+v, want attribute %q", tc.name, p, tc.attr)
			}
		} else if tc.attr != "" {
			t.Errorf("%s: publishable, want poison in %s", tc.name, tc.attr)
		}
	}
	// Size: 30 values of 90 bytes each are under the cap, the event over
	// 2000 bytes; escaping counts (a value of control characters grows
	// sixfold in JSON).
	var many []string
	for i := 0; i < 30; i++ {
		many = append(many, strings.Repeat("m", 90))
	}
	ev := event.Event{V: 1, Op: event.OpAdd, Kind: event.KindUser, UUID: "u", DN: "uid=a", At: time.Now(),
		New: event.Attrs{event.AttrUID: {"a"}, event.AttrAlternativeAddress: many}}
	if p := l.poisonSize(&ev); p == nil || p.Attr != event.AttrAlternativeAddress || !strings.Contains(p.Reason, "maximum message size") {
		t.Errorf("30×90 bytes: %+v, want too large, naming mailAlternativeAddress", p)
	}
	ev.New = event.Attrs{event.AttrUID: {"a"}, event.AttrCN: {strings.Repeat("\x01", 95)}, event.AttrAlternativeAddress: many[:10]}
	if p := l.poisonSize(&ev); p != nil {
		t.Errorf("a small event: %+v", p)
	}
	ev.New[event.AttrCN] = []string{strings.Repeat("\x01", 95), strings.Repeat("\x01", 95), strings.Repeat("\x01", 95)}
	if p := l.poisonSize(&ev); p == nil || p.Attr != event.AttrCN {
		t.Errorf("escaped control characters over the limit: %+v, want too large naming cn", p)
	}
}
