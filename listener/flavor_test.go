package listener_test

import (
	"testing"
	"time"

	"mailsync/config"
	"mailsync/event"
	"mailsync/listener"
)

// attrs is an Entry of fixed operational attributes.
type attrs map[string]string

func (a attrs) Attr(name string) string { return a[name] }

// TestFlavorChangeIDs: each flavor names a change so that the change's time
// can be read back (event.ChangeTime), a replay of the change gets the same
// id and another change another one.
func TestFlavorChangeIDs(t *testing.T) {
	follow := event.Attrs{event.AttrUID: {"rita"}, event.AttrPrimaryAddress: {"rita@example.org"}}
	other := event.Attrs{event.AttrUID: {"rita"}, event.AttrPrimaryAddress: {"rita.new@example.org"}}
	dn := "uid=rita,ou=people,dc=example,dc=org"
	start := []byte("127.0.0.1:389#cn=Directory Manager:dc=example,dc=org:(objectClass=*)#40")
	persist := []byte("127.0.0.1:389#cn=Directory Manager:dc=example,dc=org:(objectClass=*)#42")
	at := time.Date(2026, 12, 2, 3, 19, 1, 0, time.UTC)
	ds := attrs{"modifyTimestamp": "20261202031901Z", "nsUniqueId": "b982da91-edff11f1-803ad324-5f83640d"}
	for _, c := range []struct {
		name   string
		flavor listener.Flavor
		change listener.Sent
		want   string
		at     time.Time
	}{
		{"openldap", listener.OpenLDAP{}, listener.Sent{Entry: attrs{"entryCSN": "20261202031901.123456Z#000000#000#000000"}, DN: dn, Attrs: follow},
			"20261202031901.123456Z#000000#000#000000", at.Add(123456 * time.Microsecond)},
		{"389ds persist", listener.DS389{}, listener.Sent{Entry: ds, DN: dn, Attrs: follow, Cookie: persist, Start: start},
			"20261202031901Z#cn42", at},
		{"389ds refresh", listener.DS389{}, listener.Sent{Entry: ds, DN: dn, Attrs: follow, Start: start}, "", at},
		{"389ds search", listener.DS389{}, listener.Sent{Entry: ds, DN: dn, Attrs: follow}, "", at},
	} {
		id := c.flavor.ChangeID(c.change)
		if c.want != "" && id != c.want {
			t.Errorf("%s: id %q, want %q", c.name, id, c.want)
		}
		if got, ok := event.ChangeTime(id); !ok || !got.Equal(c.at) {
			t.Errorf("%s: id %q dates the change %v (%v), want %v", c.name, id, got, ok, c.at)
		}
		if again := c.flavor.ChangeID(c.change); again != id {
			t.Errorf("%s: a replay is named %q, the change %q", c.name, again, id)
		}
		if c.change.Cookie == nil && c.flavor.Name() == "389ds" {
			changed := c.change
			changed.Attrs = other
			if o := c.flavor.ChangeID(changed); o == id {
				t.Errorf("%s: two states of the entry share the id %q", c.name, id)
			}
		}
	}
}

func TestFlavorIdentityAndNames(t *testing.T) {
	if id, err := (listener.DS389{}).Identity(attrs{"nsUniqueId": "B982DA91-EDFF11F1-803AD324-5F83640D"}); err != nil || id != "b982da91-edff-11f1-803a-d3245f83640d" {
		t.Errorf("389ds identity %q %v", id, err)
	}
	if _, err := (listener.DS389{}).Identity(attrs{}); err == nil {
		t.Error("389ds: an entry without nsUniqueId has an identity")
	}
	if id, err := (listener.OpenLDAP{}).Identity(attrs{"entryUUID": "73cc1e60-824b-1041-99c8-f52a4d4de89d"}); err != nil || id != "73cc1e60-824b-1041-99c8-f52a4d4de89d" {
		t.Errorf("openldap identity %q %v", id, err)
	}
	if _, err := (listener.OpenLDAP{}).Identity(attrs{}); err == nil {
		t.Error("openldap: an entry without entryUUID has an identity")
	}
	for name, want := range map[string]string{"": "openldap", "openldap": "openldap", "389ds": "389ds"} {
		f, err := listener.ParseFlavor(name)
		if err != nil || f.Name() != want {
			t.Errorf("ParseFlavor(%q) = %v %v, want %s", name, f, err, want)
		}
	}
	for _, name := range []string{"ad", "389", "OpenLDAP"} {
		if _, err := listener.ParseFlavor(name); err == nil {
			t.Errorf("ParseFlavor accepted %q, which ldap.flavor refuses", name)
		}
	}
}

// TestParseFlavorTakesConfigsFlavors: every name ldap.flavor allows
// (config.Flavors, the one list) has its flavor here, named the same.
func TestParseFlavorTakesConfigsFlavors(t *testing.T) {
	for _, name := range config.Flavors() {
		f, err := listener.ParseFlavor(name)
		if err != nil {
			t.Errorf("ldap.flavor %q: %v", name, err)
			continue
		}
		if f.Name() != name {
			t.Errorf("ldap.flavor %q parses to a flavor named %q", name, f.Name())
		}
	}
}
