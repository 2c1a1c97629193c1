package mailconf_test

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"mailsync/config"
	"mailsync/fault"
	"mailsync/mailconf"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

var ucsTarget = mailconf.DovecotTarget{
	ConfDir:    "/etc/dovecot",
	MailHome:   "/var/spool/dovecot/private/%Ld/%Ln",
	IndexHome:  "/var/lib/dovecot/index/%Ld/%Ln",
	UnitDropIn: "/etc/systemd/system/dovecot.service.d/mailsync-limits.conf",
}

// ucsFacts are the services of this Dovecot 2.3.19 (testdata, from
// `doveconf -a`) with UCS's protocols and Pigeonhole's managesieve
// services added: imap pop3 lmtp sieve, as a UCS mail server runs them.
func ucsFacts(t *testing.T) mailconf.DovecotFacts {
	t.Helper()
	data, err := os.ReadFile("testdata/doveconf-a-2.3.19.txt")
	if err != nil {
		t.Fatal(err)
	}
	_, services := mailconf.ParseDoveconf(string(data))
	services = append(services,
		mailconf.DovecotService{Name: "managesieve-login", Type: "login", Protocol: "sieve", ServiceCount: 1},
		mailconf.DovecotService{Name: "managesieve", Protocol: "sieve", ClientLimit: 1, ServiceCount: 1},
	)
	return mailconf.DovecotFacts{Version: "2.3.19.1", Protocols: []string{"imap", "pop3", "lmtp", "sieve"}, Services: services}
}

func TestParseDoveconf(t *testing.T) {
	data, err := os.ReadFile("testdata/doveconf-a-2.3.19.txt")
	if err != nil {
		t.Fatal(err)
	}
	protocols, services := mailconf.ParseDoveconf(string(data))
	if strings.Join(protocols, " ") != "imap lmtp" {
		t.Errorf("protocols = %q", protocols)
	}
	got := map[string]mailconf.DovecotService{}
	for _, s := range services {
		got[s.Name] = s
	}
	if len(services) != 30 {
		t.Errorf("%d services, want the 30 of the file", len(services))
	}
	for _, want := range []mailconf.DovecotService{
		{Name: "imap-login", Type: "login", Protocol: "imap", ServiceCount: 1},
		{Name: "imap", Protocol: "imap", ProcessLimit: 1024, ClientLimit: 1, ServiceCount: 1},
		{Name: "lmtp", Protocol: "lmtp", ClientLimit: 1},
		{Name: "auth", ProcessLimit: 1},
		{Name: "anvil", Type: "anvil", ProcessLimit: 1},
	} {
		if got[want.Name] != want {
			t.Errorf("service %s = %+v, want %+v", want.Name, got[want.Name], want)
		}
	}
}

// The manual's example (14.7.12): with default_client_limit and
// default_process_limit at 3000 Dovecot asks for auth 15000 and anvil
// 12003. mailsync writes those numbers itself.
func TestRenderDovecotManualNumbers(t *testing.T) {
	files, err := mailconf.RenderDovecot(mailconf.Settings{
		"mail/dovecot/limits/default_client_limit":  "3000",
		"mail/dovecot/limits/default_process_limit": "3000",
	}, ucsTarget, ucsFacts(t))
	if err != nil {
		t.Fatal(err)
	}
	limits := string(fileAt(t, files, "/etc/dovecot/conf.d/"+mailconf.DovecotLimitsFile).Data)
	for _, want := range []string{"service auth {\n  client_limit = 15000\n}", "service anvil {\n  client_limit = 12003\n}"} {
		if !strings.Contains(limits, want) {
			t.Errorf("limits fragment lacks %q:\n%s", want, limits)
		}
	}
	unit := string(fileAt(t, files, ucsTarget.UnitDropIn).Data)
	if !strings.Contains(unit, "LimitNOFILE=15000\n") {
		t.Errorf("drop-in = %q, want LimitNOFILE=15000 (the manual's fd warning: 2000 < 15000)", unit)
	}

	// At UCS's defaults (400) the static 2000 and 1603 are exactly enough.
	files, err = mailconf.RenderDovecot(mailconf.Settings{}, ucsTarget, ucsFacts(t))
	if err != nil {
		t.Fatal(err)
	}
	limits = string(fileAt(t, files, "/etc/dovecot/conf.d/"+mailconf.DovecotLimitsFile).Data)
	for _, want := range []string{"client_limit = 2000\n", "client_limit = 1603\n"} {
		if !strings.Contains(limits, want) {
			t.Errorf("default limits lack %q:\n%s", want, limits)
		}
	}
}

func TestRenderDovecotGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    mailconf.Settings
	}{
		{"dovecot-default", mailconf.Settings{config.KeySeparateIndex: "no"}},
		{"dovecot-nfs-limits", mailconf.Settings{
			config.KeySeparateIndex:                       "yes",
			"mail/dovecot/process/mmap_disable":           "yes",
			"mail/dovecot/process/dotlock_use_excl":       "yes",
			"mail/dovecot/process/mail_fsync":             "always",
			"mail/dovecot/process/lock_method":            "dotlock",
			"mail/dovecot/process/mail_nfs_storage":       "no",
			"mail/dovecot/process/mail_nfs_index":         "true",
			"mail/dovecot/limits/default_client_limit":    "3000",
			"mail/dovecot/limits/default_process_limit":   "3000",
			"mail/dovecot/limits/imap/process_limit":      "4000",
			"mail/dovecot/limits/imap-login/client_limit": "10",
			"mail/dovecot/limits/auth/client_limit":       "20000", // above the requirement: kept
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, err := mailconf.RenderDovecot(tc.s, ucsTarget, ucsFacts(t))
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, tc.name, files)
		})
	}
}

func TestRenderDovecotRefusesBadSettings(t *testing.T) {
	for _, tc := range []struct {
		key, value string
	}{
		{"mail/dovecot/limits/default_process_limit", "many"},
		{"mail/dovecot/limits/default_client_limit", "-5"},
		{"mail/dovecot/limits/imap/process_limit", "0"},
		{"mail/dovecot/limits/auth/client_limit", "1e4"},
		{"mail/dovecot/limits/imap-login/process_min_avail", "-1"},
		{"mail/dovecot/limits/default_vsz_limit", "lots"},
		{"mail/dovecot/limits/imap/vsz_limit", "12MX"},
		{"mail/dovecot/limits/imap/procces_limit", "100"}, // a typo
		{"mail/dovecot/process/mmap_disable", "maybe"},
		{"mail/dovecot/process/mail_fsync", "sometimes"},
		{"mail/dovecot/process/lock_method", "posix"},
		{config.KeySeparateIndex, "perhaps"},
	} {
		files, err := mailconf.RenderDovecot(mailconf.Settings{tc.key: tc.value}, ucsTarget, ucsFacts(t))
		var se *mailconf.SettingError
		if !errors.As(err, &se) || se.Key != tc.key || !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), tc.value) {
			t.Errorf("%s=%q: err = %v, want a mailconf.SettingError naming the variable and its value", tc.key, tc.value, err)
		}
		if !fault.IsPermanent(err) || files != nil {
			t.Errorf("%s=%q: files %d, permanent %v; want nothing rendered, permanent", tc.key, tc.value, len(files), fault.IsPermanent(err))
		}
	}
	// Every bad key is named at once.
	_, err := mailconf.RenderDovecot(mailconf.Settings{
		"mail/dovecot/limits/default_process_limit": "many",
		"mail/dovecot/limits/default_client_limit":  "-1",
	}, ucsTarget, ucsFacts(t))
	for _, k := range []string{"default_process_limit", "default_client_limit"} {
		if !strings.Contains(fmt.Sprint(err), k) {
			t.Errorf("err = %v, want %s named", err, k)
		}
	}
	// Good sizes pass.
	for _, v := range []string{"0", "256M", "1G", "512k", "2GB", "1048576"} {
		if _, err := mailconf.RenderDovecot(mailconf.Settings{"mail/dovecot/limits/default_vsz_limit": v}, ucsTarget, ucsFacts(t)); err != nil {
			t.Errorf("vsz %q: %v", v, err)
		}
	}
}

// The renderer knows exactly the Dovecot keys config accepts.
func TestDovecotKeysAgreeWithConfig(t *testing.T) {
	ours := mailconf.DovecotKeys()
	theirs := append([]string(nil), config.DovecotConfKeys...)
	sort.Strings(ours)
	sort.Strings(theirs)
	if strings.Join(ours, "\n") != strings.Join(theirs, "\n") {
		t.Errorf("mailconf renders\n%s\nconfig accepts\n%s", strings.Join(ours, "\n"), strings.Join(theirs, "\n"))
	}
}

func TestRenderDovecotRefuses24(t *testing.T) {
	f := ucsFacts(t)
	f.Version = "2.4.1"
	if _, err := mailconf.RenderDovecot(mailconf.Settings{}, ucsTarget, f); err == nil || !strings.Contains(err.Error(), "2.4.1") {
		t.Errorf("err = %v, want Dovecot 2.4 refused", err)
	}
}
