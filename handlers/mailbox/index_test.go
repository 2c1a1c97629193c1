package mailbox

import "testing"

func TestHomeGlob(t *testing.T) {
	for tmpl, want := range map[string]string{
		"/var/spool/dovecot/private/%Ld/%Ln": "/var/spool/dovecot/private/*/*",
		"/srv/mail[1]/%d/%n/home":            `/srv/mail\[1]/*/*/home`,
		"/srv/%%/%Lu":                        "/srv/%/*",
	} {
		if got := homeGlob(tmpl); got != want {
			t.Errorf("homeGlob(%q) = %q, want %q", tmpl, got, want)
		}
	}
}
