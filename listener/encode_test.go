package listener

import (
	"bytes"
	"encoding/json"
	"hash/fnv"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	"mailsync/event"
)

// The hand-written encoders must produce exactly what encoding/json does:
// consumers decode either, and a replayed event must be the same message.
func TestEncodeMatchesEncodingJSON(t *testing.T) {
	odd := []string{"", "plain", `quote" back\slash`, "<b>&amp;</b>", "tab\tnl\ncr\rbs\bff\f", "\x00\x01\x1f\x7f",
		"caf\u00e9 \u2028 \u2029 \U0001F600", "bad \xff\xfe utf8 \xc3", "cn=M\u00fcller\\, Hans,ou=people,dc=example,dc=org"}
	at := time.Date(2025, 3, 4, 5, 6, 7, 890123000, time.UTC)
	attrs := event.Attrs{"uid": {"jdoe"}, "objectClass": {"top", "univentionMail"}, "cn": {odd[3], odd[7]}, "mailAlternativeAddress": {}, "nilvals": nil}
	events := []event.Event{
		{V: 1, Op: event.OpAdd, Kind: event.KindUser, UUID: "u-1", DN: "uid=jdoe,dc=x", New: attrs, CSN: "20250101000000.000000Z#000000#000#000000", At: at},
		{V: 1, Op: event.OpModify, Kind: event.KindGroup, UUID: "u-2", DN: odd[8], OldDN: odd[1], Old: event.Attrs{"cn": {odd[6]}}, New: event.Attrs{"cn": {odd[4]}}, At: at.Add(time.Nanosecond)},
		{V: 1, Op: event.OpDelete, Kind: event.KindList, UUID: odd[5], DN: odd[2], Old: attrs, New: event.Attrs{}, At: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)},
		{},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "Z", "0", " ", "\"", "\\", "<", ">", "&", "\n", "\x00", "\x1b", "\u00e9", "\u2028", "\u2029", "\U0001F600", "\xff", "\xe2\x80", "=", ","}
	str := func() string {
		var b []byte
		for n := rng.IntN(12); n > 0; n-- {
			b = append(b, alphabet[rng.IntN(len(alphabet))]...)
		}
		return string(b)
	}
	for range 500 {
		a := event.Attrs{}
		for n := rng.IntN(6); n > 0; n-- {
			vals := []string{}
			for m := rng.IntN(4); m > 0; m-- {
				vals = append(vals, str())
			}
			a[str()] = vals
		}
		events = append(events, event.Event{V: rng.IntN(3), Op: event.Op(str()), Kind: event.Kind(str()), UUID: str(), DN: str(),
			OldDN: str(), New: a, CSN: str(), At: at.Add(time.Duration(rng.Int64N(1e15)))})
	}
	for i, ev := range events {
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		for _, spliced := range []bool{false, true} {
			var newJSON []byte
			if spliced && ev.New != nil {
				newJSON = appendAttrs(nil, ev.New)
			}
			got, err := appendEvent(nil, &ev, newJSON)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("event %d (spliced %v):\n got %s\nwant %s", i, spliced, got, want)
			}
		}
		e := event.Entry{UUID: ev.UUID, DN: ev.DN, Kind: ev.Kind, Attrs: ev.New, CSN: ev.CSN}
		want, _ = json.Marshal(e)
		if got := appendEntry(nil, &e, nil); !bytes.Equal(got, want) {
			t.Errorf("entry %d:\n got %s\nwant %s", i, got, want)
		}
	}
	if _, err := appendEvent(nil, &event.Event{At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, nil); err == nil {
		t.Error("year 10000: want the error encoding/json gives")
	}
}

// attrSum is FNV-1a written out; the digests must stay those of hash/fnv,
// which the sums already stored in deployments were computed with.
func TestAttrSumIsFNV1a(t *testing.T) {
	a := event.Attrs{"uid": {"jdoe"}, "objectClass": {"top", "univentionMail"}, "cn": {"J\u00f6 Doe", ""}, "ignored": {"x"}}
	h := fnv.New64a()
	for _, name := range event.Followed {
		vals, ok := a[name]
		if !ok {
			continue
		}
		h.Write([]byte(name))
		h.Write([]byte{0})
		for _, v := range vals {
			h.Write([]byte(v))
			h.Write([]byte{1})
		}
		h.Write([]byte{2})
	}
	if got, want := attrSum(a), h.Sum64(); got != want {
		t.Errorf("attrSum = %016x, hash/fnv gives %016x", got, want)
	}
}

// sample returns a value of type t that is not its zero value, so that a
// field holding it must show in the encoding.
func sample(t *testing.T, typ reflect.Type, n int) reflect.Value {
	t.Helper()
	v := reflect.New(typ).Elem()
	switch {
	case typ == reflect.TypeOf(time.Time{}):
		v.Set(reflect.ValueOf(time.Date(2025, 3, 4, 5, 6, 7, 8+n, time.UTC)))
	case typ.Kind() == reflect.String:
		v.SetString("s<" + strconv.Itoa(n) + ">")
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Int64:
		v.SetInt(int64(40 + n))
	case typ.Kind() >= reflect.Uint && typ.Kind() <= reflect.Uint64:
		v.SetUint(uint64(40 + n))
	case typ.Kind() == reflect.Bool:
		v.SetBool(true)
	case typ.Kind() == reflect.Slice:
		v.Set(reflect.Append(reflect.MakeSlice(typ, 0, 1), sample(t, typ.Elem(), n)))
	case typ.Kind() == reflect.Map:
		v.Set(reflect.MakeMap(typ))
		v.SetMapIndex(sample(t, typ.Key(), n), sample(t, typ.Elem(), n+1))
	default:
		t.Fatalf("no sample value for a field of type %s: teach sample (and the encoder) about it", typ)
	}
	return v
}

// The hand-written encoders must keep up with the structs: every field of
// event.Event and event.Entry, set on its own and all at once, encodes as
// encoding/json encodes it and decodes back to what was set. A field added
// to either struct and not to appendEvent or appendEntry fails here.
func TestEncodeCoversEveryField(t *testing.T) {
	check := func(name string, typ reflect.Type, encode func(v reflect.Value) ([]byte, error)) {
		all := reflect.New(typ).Elem()
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if !f.IsExported() || f.Tag.Get("json") == "-" {
				continue
			}
			one := reflect.New(typ).Elem()
			one.Field(i).Set(sample(t, f.Type, i))
			all.Field(i).Set(sample(t, f.Type, i))
			for what, v := range map[string]reflect.Value{f.Name + " alone": one, "every field": all} {
				got, err := encode(v)
				if err != nil {
					t.Fatalf("%s with %s: %v", name, what, err)
				}
				want, err := json.Marshal(v.Interface())
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s with %s:\n got %s\nwant %s", name, what, got, want)
				}
				back := reflect.New(typ)
				if err := json.Unmarshal(got, back.Interface()); err != nil {
					t.Fatalf("%s with %s: decode %s: %v", name, what, got, err)
				}
				if !reflect.DeepEqual(back.Elem().Interface(), v.Interface()) {
					t.Errorf("%s with %s: decodes to %+v, want %+v", name, what, back.Elem().Interface(), v.Interface())
				}
			}
		}
	}
	check("event", reflect.TypeOf(event.Event{}), func(v reflect.Value) ([]byte, error) {
		ev := v.Interface().(event.Event)
		return appendEvent(nil, &ev, nil)
	})
	check("entry", reflect.TypeOf(event.Entry{}), func(v reflect.Value) ([]byte, error) {
		e := v.Interface().(event.Entry)
		return appendEntry(nil, &e, nil), nil
	})
}
