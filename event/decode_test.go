package event

import (
	"encoding/json"
	"reflect"
	"strconv"
	"testing"
	"time"
)

// sampleOf returns a value of typ with every exported field set (nested
// values included), so that each field shows in its encoding.
func sampleOf(t *testing.T, typ reflect.Type, n int) reflect.Value {
	t.Helper()
	v := reflect.New(typ).Elem()
	switch {
	case typ == reflect.TypeOf(time.Time{}):
		v.Set(reflect.ValueOf(time.Date(2026, 12, 2, 5, 6, 7, 8+n, time.UTC)))
	case typ.Kind() == reflect.Struct:
		for i := 0; i < typ.NumField(); i++ {
			if typ.Field(i).IsExported() {
				v.Field(i).Set(sampleOf(t, typ.Field(i).Type, n+i))
			}
		}
	case typ.Kind() == reflect.String:
		v.SetString("s" + strconv.Itoa(n))
	case typ.Kind() == reflect.Int:
		v.SetInt(int64(40 + n))
	case typ.Kind() == reflect.Slice:
		v.Set(reflect.Append(reflect.MakeSlice(typ, 0, 2), sampleOf(t, typ.Elem(), n), sampleOf(t, typ.Elem(), n+1)))
	case typ.Kind() == reflect.Map:
		v.Set(reflect.MakeMap(typ))
		v.SetMapIndex(sampleOf(t, typ.Key(), n), sampleOf(t, typ.Elem(), n+1))
		v.SetMapIndex(sampleOf(t, typ.Key(), n+2), sampleOf(t, typ.Elem(), n+3))
	default:
		t.Fatalf("no sample value for a field of type %s: teach sampleOf (and the decoder) about it", typ)
	}
	return v
}

// The fast decoders must keep up with the structs: an Event and an Entry
// with every field set, as the listener writes them (the bytes of
// json.Marshal, listener/encode_test.go), are read by the fast path itself,
// not handed on to encoding/json, and give what was encoded. A field added
// to either struct and not to the decoder fails here.
func TestDecodeReadsEveryField(t *testing.T) {
	ev := sampleOf(t, reflect.TypeOf(Event{}), 0).Interface().(Event)
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var got Event
	if d := (decoder{b: data}); !d.event(&got) {
		t.Fatalf("the fast path does not read %s", data)
	}
	if !reflect.DeepEqual(got, ev) {
		t.Errorf("event %s decodes to %+v, want %+v", data, got, ev)
	}
	e := sampleOf(t, reflect.TypeOf(Entry{}), 0).Interface().(Entry)
	if data, err = json.Marshal(e); err != nil {
		t.Fatal(err)
	}
	var gotE Entry
	if d := (decoder{b: data}); !d.entry(&gotE) {
		t.Fatalf("the fast path does not read %s", data)
	}
	if !reflect.DeepEqual(gotE, e) {
		t.Errorf("entry %s decodes to %+v, want %+v", data, gotE, e)
	}
}

// Whatever the input, Decode and DecodeEntry give what json.Unmarshal
// gives: the same value, and an error exactly when it has one.
func checkSameAsJSON(t *testing.T, data []byte) {
	t.Helper()
	var want, got Event
	werr := json.Unmarshal(data, &want)
	gerr := Decode(data, &got)
	if (werr == nil) != (gerr == nil) || (werr == nil && !reflect.DeepEqual(got, want)) {
		t.Errorf("Decode(%q) = %+v, %v; json.Unmarshal: %+v, %v", data, got, gerr, want, werr)
	}
	var wantE, gotE Entry
	werr = json.Unmarshal(data, &wantE)
	gerr = DecodeEntry(data, &gotE)
	if (werr == nil) != (gerr == nil) || (werr == nil && !reflect.DeepEqual(gotE, wantE)) {
		t.Errorf("DecodeEntry(%q) = %+v, %v; json.Unmarshal: %+v, %v", data, gotE, gerr, wantE, werr)
	}
}

var decodeSeeds = []string{
	`{"v":1,"op":"modify","kind":"group","uuid":"u1","dn":"cn=g,dc=x","old":{"uniqueMember":["uid=a,dc=x"]},"new":{"uniqueMember":["uid=a,dc=x","uid=b,dc=x"]},"csn":"20261202061500.000001Z#000000#000#000000","at":"2026-12-02T06:15:00.123456789Z"}`,
	`{"uuid":"u1","dn":"cn=g,dc=x","kind":"group","attrs":{"cn":["g"],"objectClass":["posixGroup"]},"csn":"c"}`,
	` { "v" : 1 , "new" : { "cn" : [ "a" , "b" ] } , "at" : "2026-12-02T06:15:00Z" } `,
	`{"v":1,"dn":"cn=a\\,b,dc=x"}`,                  // an escape
	`{"v":1,"dn":"cn=\u00e9,dc=x"}`,                 // a \u escape
	`{"v":1,"dn":"cn=é,dc=x","new":{"cn":["é"]}}`,   // UTF-8
	"{\"v\":1,\"dn\":\"cn=\xff,dc=x\"}",             // invalid UTF-8
	"{\"v\":1,\"dn\":\"a\tb\"}",                     // a control character
	`{"v":1,"old":null,"new":{"cn":null,"uid":[]}}`, // nulls, an empty list
	`{"attrs":{}}`,
	`{"attrs":null,"kind":"user"}`,
	`{"v":1,"v":2}`, // a key twice
	`{"new":{"cn":["a"]},"new":{"uid":["b"]}}`,
	`{"attrs":{"cn":["a"],"cn":["b"]}}`, // an attribute twice
	`{"V":1,"DN":"x"}`,                  // keys in another case
	`{"v":1,"extra":true}`,              // an unknown key
	`{"v":1.0}`, `{"v":1e2}`, `{"v":01}`, `{"v":-0}`, `{"v":99999999999999999999}`, `{"v":"1"}`, `{"v":null}`,
	`{"at":"2026-12-02T06:15:00Z"}`, `{"at":"yesterday"}`, `{"at":null}`, `{"at":""}`,
	`{"v":1} x`, `{"v":1`, `{"v":1,}`, `{,}`, `{}`, `[]`, `null`, ``, `{"dn":"x"`, `{"new":{"cn":["a",]}}`,
	`{"new":{"cn":["a"}}`, `{"new":{"cn":[1]}}`, `{"new":[]}`, `{"dn":nul}`, `{"attrs":{"cn":nullx}}`,
}

func TestDecodeSameAsJSON(t *testing.T) {
	for _, s := range decodeSeeds {
		checkSameAsJSON(t, []byte(s))
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkSameAsJSON)
}

// BenchmarkDecode: a membership change as a burst carries it (a group of
// 25 members gaining one), the fast path and encoding/json.
func BenchmarkDecode(b *testing.B) {
	var old []string
	for i := 0; i < 25; i++ {
		old = append(old, "uid=u"+strconv.Itoa(100000+i*37)+",cn=users,dc=example,dc=org")
	}
	ev := Event{V: Version, Op: OpModify, Kind: KindGroup, UUID: "g-g3-0042", DN: "cn=g3-0042,cn=groups,dc=example,dc=org",
		Old: Attrs{AttrCN: {"g3-0042"}, AttrObjectClass: {"posixGroup", "univentionGroup"}, AttrUniqueMember: old},
		New: Attrs{AttrCN: {"g3-0042"}, AttrObjectClass: {"posixGroup", "univentionGroup"}, AttrUniqueMember: append(old, "uid=u000001,cn=users,dc=example,dc=org")},
		CSN: "20261202061500.000001Z#000000#000#000000", At: time.Now().UTC()}
	data, _ := json.Marshal(ev)
	for name, decode := range map[string]func([]byte, *Event) error{"fast": Decode, "json": func(b []byte, ev *Event) error { return json.Unmarshal(b, ev) }} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var ev Event
				if err := decode(data, &ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
