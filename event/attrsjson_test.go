package event

import (
	"encoding/json"
	"reflect"
	"testing"
)

var attrsJSONCases = []string{
	`null`,
	` null `,
	`{}`,
	` { } `,
	`{"objectClass":["top","person","univentionMail"],"uid":["u1"],"mailPrimaryAddress":["u1@example.org"]}`,
	`{"uniqueMember":["uid=a,cn=users,dc=example,dc=org","uid=b,cn=users,dc=example,dc=org"],"cn":["g"]}`,
	`{"cn":[]}`,
	`{"cn":null}`,
	`{"cn":["a"],"cn":["b","c"]}`,
	`{"unknownAttr":["x"],"cn":["Jörg Müller"]}`,
	`{"cn":["a\"b"],"uid":["\u003cx\u003e"]}`,
	`{"cn":["\ud83d\ude00"]}`,
	"{\"cn\":[\"\xff\xfe\"]}",
	"{\"cn\":[\"a\u2028b\"]}",
	"\n{\n \"cn\" : [ \"a\" , \"b\" ] ,\n \"uid\":[\"c\"]\n}\n",
	`{"cn":["a"]`,
	`{"cn":["a"]}x`,
	`{"cn":"a"}`,
	`{"cn":[1]}`,
	`{"cn":["a",]}`,
	`{,}`,
	`[]`,
	`"x"`,
	``,
	"{\"cn\":[\"a\tb\"]}",
	`{"univentionMailHomeServer":["mail.example.org"],"univentionMailUserQuota":["0"]}`,
}

// decodeStd is what encoding/json makes of data as a map[string][]string.
func decodeStd(data []byte) (map[string][]string, error) {
	var m map[string][]string
	err := json.Unmarshal(data, &m)
	return m, err
}

func checkSame(t *testing.T, data []byte) {
	t.Helper()
	want, werr := decodeStd(data)
	var got Attrs
	gerr := json.Unmarshal(data, &got)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("%q: error %v, encoding/json's %v", data, gerr, werr)
	}
	if werr != nil {
		return
	}
	if !reflect.DeepEqual(map[string][]string(got), want) {
		t.Fatalf("%q: decoded %#v, encoding/json %#v", data, got, want)
	}
	// Inside a struct, as entries and events carry it.
	var e struct{ Attrs Attrs }
	if err := json.Unmarshal([]byte(`{"Attrs":`+string(data)+`}`), &e); err != nil {
		t.Fatalf("%q in a struct: %v", data, err)
	}
	if !reflect.DeepEqual(map[string][]string(e.Attrs), want) {
		t.Fatalf("%q in a struct: decoded %#v, encoding/json %#v", data, e.Attrs, want)
	}
}

func TestAttrsUnmarshalLikeEncodingJSON(t *testing.T) {
	for _, c := range attrsJSONCases {
		checkSame(t, []byte(c))
	}
}

// An append to one attribute's values must not change another's, though
// the lists share one array.
func TestAttrsUnmarshalListsIndependent(t *testing.T) {
	var a Attrs
	if err := json.Unmarshal([]byte(`{"cn":["a"],"uid":["b"],"mailAlternativeAddress":["c","d"]}`), &a); err != nil {
		t.Fatal(err)
	}
	for name := range a {
		a[name] = append(a[name], "added")
	}
	want := Attrs{"cn": {"a", "added"}, "uid": {"b", "added"}, "mailAlternativeAddress": {"c", "d", "added"}}
	if !reflect.DeepEqual(a, want) {
		t.Fatalf("after appends %v, want %v", a, want)
	}
}

// The reason for the decoder: a user entry costs a handful of allocations,
// not one per name, value and list.
func TestAttrsUnmarshalAllocations(t *testing.T) {
	data := []byte(`{"cn":["User 1"],"mailAlternativeAddress":["a1@example.org","b1@example.org"],"mailPrimaryAddress":["u1@example.org"],"objectClass":["top","person","posixAccount","univentionMail","inetOrgPerson"],"uid":["u1"],"univentionMailHomeServer":["mail.example.org"]}`)
	var a Attrs
	allocs := testing.AllocsPerRun(100, func() {
		a = nil
		if err := a.UnmarshalJSON(data); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 5 {
		t.Fatalf("%.0f allocations decoding one user's attributes, want at most 5 (the map and its table, the values, the lists)", allocs)
	}
	var std map[string][]string
	stdAllocs := testing.AllocsPerRun(100, func() {
		std = nil
		if err := json.Unmarshal(data, &std); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("allocations: %.0f, encoding/json %.0f", allocs, stdAllocs)
}

func FuzzAttrsUnmarshal(f *testing.F) {
	for _, c := range attrsJSONCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSame(t, data)
	})
}
