package mailconf

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"mailsync/config"
	"mailsync/fault"
)

// The Dovecot fragments mailsync renders, in <ConfDir>/conf.d. Debian's
// dovecot.conf includes conf.d/*.conf in name order, so "99-" puts them
// after the packaged files and an administrator's local.conf still wins.
const (
	DovecotMailFile   = "99-mailsync-mail.conf"
	DovecotLimitsFile = "99-mailsync-limits.conf"
)

// DovecotTarget says where the Dovecot fragments go and which mailbox
// layout they must describe: the one mailsync itself computes paths from
// (config dovecot.mail_home, dovecot.index_home), so the two cannot differ.
type DovecotTarget struct {
	// ConfDir holds dovecot.conf (/etc/dovecot); fragments go to conf.d/.
	ConfDir   string
	MailHome  string
	IndexHome string
	// UnitDropIn is the systemd drop-in carrying the fd limit
	// (LimitNOFILE); "" renders none.
	UnitDropIn string
	// PublicHome is the root of the public folders' maildirs
	// (RenderDovecotPublic; UCS /var/spool/dovecot/public).
	PublicHome string
}

// DovecotService is one service of the installed configuration as
// `doveconf -a` shows it; 0 means Dovecot's default for the limit.
type DovecotService struct {
	Name, Type, Protocol                    string
	ProcessLimit, ClientLimit, ServiceCount int
}

// DovecotFacts is what the renderer must know about the installed Dovecot,
// read without mailsync's own fragments (DovecotHost.Probe).
type DovecotFacts struct {
	Version   string   // "2.3.19.1"
	Protocols []string // the protocols setting
	Services  []DovecotService
}

// Limits UCS's 10-master.conf and 20-managesieve.conf templates read
// (reference §5.1), with their defaults; "" derives the default from
// another setting (see limitDefault).
var dovecotLimits = []struct {
	key  string // after mail/dovecot/limits/
	kind limitKind
	def  string
}{
	{"default_process_limit", atLeastOne, "400"},
	{"default_client_limit", atLeastOne, "400"},
	{"default_vsz_limit", size, "256M"},
	{"imap-login/service_count", atLeastZero, "1"}, // "high-security mode" (manual 14.7.12)
	{"imap-login/process_min_avail", atLeastZero, "0"},
	{"imap-login/client_limit", atLeastOne, ""},
	{"imap-login/vsz_limit", size, ""},
	{"pop3-login/service_count", atLeastZero, "1"},
	{"pop3-login/process_min_avail", atLeastZero, "0"},
	{"pop3-login/client_limit", atLeastOne, ""},
	{"pop3-login/vsz_limit", size, ""},
	{"imap/process_limit", atLeastOne, ""},
	{"imap/vsz_limit", size, ""},
	{"pop3/process_limit", atLeastOne, ""},
	{"pop3/vsz_limit", size, ""},
	// UCS prints these two as given, 2000 and 1603 when unset; mailsync
	// takes them as a floor and raises them to what Dovecot requires.
	{"auth/client_limit", atLeastOne, "2000"},
	{"anvil/client_limit", atLeastOne, "1603"},
	{"managesieve/process_limit", atLeastOne, "400"},
	{"managesieve/mail_max_userip_connections", atLeastZero, "10"},
}

// NFS settings of manual 14.7.11, UCR mail/dovecot/process/<Dovecot name>;
// rendered only when set (unset is Dovecot's default, as on UCS).
var dovecotProcess = []struct {
	key   string
	allow []string // nil: yes or no
}{
	{"mmap_disable", nil},
	{"dotlock_use_excl", nil},
	{"mail_fsync", []string{"optimized", "always", "never"}},
	{"lock_method", []string{"fcntl", "flock", "dotlock"}},
	{"mail_nfs_storage", nil},
	{"mail_nfs_index", nil},
}

const (
	limitsPrefix  = "mail/dovecot/limits/"
	processPrefix = "mail/dovecot/process/"
)

type limitKind int

const (
	atLeastOne limitKind = iota
	atLeastZero
	size
)

// RenderDovecot renders the Dovecot fragments from the settings (UCR names)
// for the installed Dovecot described by f. It is pure: the same input
// gives the same bytes, which is what the drift check compares.
//
// Beyond UCS (reference §5.1): the auth and anvil client_limit and the fd
// limit are computed the way Dovecot checks them, so Dovecot never logs
// "is lower than required under max. load" and the administrator does not
// copy numbers out of the log (manual 14.7.12, "semi automatic").
//
// A value that is not what its setting allows is refused with a
// SettingError per key (all of them, joined), and nothing is rendered.
func RenderDovecot(s Settings, t DovecotTarget, f DovecotFacts) ([]File, error) {
	if !strings.HasPrefix(f.Version, "2.3.") {
		// 2.4 renamed the settings this writes (mail_path, mail_index_path,
		// restart_request_count); it needs its own templates.
		return nil, fault.Permanentf("dovecot %s: mailsync renders configuration for Dovecot 2.3", f.Version)
	}
	lim, errs := dovecotLimitValues(s)
	proc, perrs := dovecotProcessValues(s)
	errs = append(errs, perrs...)
	sep, err := s.Bool(config.KeySeparateIndex, false)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fault.Permanent(errors.Join(errs...))
	}

	var mail strings.Builder
	mail.WriteString(renderedHeader("mail/dovecot/location/separate_index, mail/dovecot/process/* (manual 14.7.11) and mailsync's dovecot.mail_home and dovecot.index_home"))
	fmt.Fprintf(&mail, "mail_home = %s\n", t.MailHome)
	if sep {
		// Dovecot 2.3: the index directory is a mail_location parameter.
		fmt.Fprintf(&mail, "mail_location = maildir:~/Maildir:INDEX=%s\n", t.IndexHome)
	} else {
		mail.WriteString("mail_location = maildir:~/Maildir\n")
	}
	for _, p := range proc {
		fmt.Fprintf(&mail, "%s = %s\n", p[0], p[1])
	}

	limits, nofile := renderDovecotLimits(lim, f)
	files := []File{
		{Path: filepath.Join(t.ConfDir, "conf.d", DovecotMailFile), Data: []byte(mail.String()), Mode: 0o644},
		{Path: filepath.Join(t.ConfDir, "conf.d", DovecotLimitsFile), Data: []byte(limits), Mode: 0o644},
	}
	if t.UnitDropIn != "" {
		unit := renderedHeader("mail/dovecot/limits/* (manual 14.7.12); takes effect when Dovecot is restarted") +
			"# Dovecot warns below the largest client_limit of its services.\n" +
			"[Service]\n" + fmt.Sprintf("LimitNOFILE=%d\n", nofile)
		files = append(files, File{Path: t.UnitDropIn, Data: []byte(unit), Mode: 0o644})
	}
	return files, nil
}

func renderedHeader(from string) string {
	return "# Written by `mailsync configure` from " + from + ".\n" +
		"# Changes here are overwritten: set the variables instead.\n"
}

// dovecotLimitValues checks every mail/dovecot/limits/* setting and fills
// in UCS's defaults. Keys are returned without the prefix.
func dovecotLimitValues(s Settings) (map[string]string, []error) {
	v := map[string]string{}
	var errs []error
	for _, l := range dovecotLimits {
		key := limitsPrefix + l.key
		val, set := s[key]
		val = strings.TrimSpace(val)
		if !set || val == "" {
			v[l.key] = l.def
			continue
		}
		if err := checkLimit(key, val, l.kind); err != nil {
			errs = append(errs, err)
			continue
		}
		v[l.key] = val
	}
	for k, val := range s {
		if strings.HasPrefix(k, limitsPrefix) {
			if _, ok := v[strings.TrimPrefix(k, limitsPrefix)]; !ok {
				errs = append(errs, &SettingError{Key: k, Value: val, Reason: "unknown limit: want one of those mailsync renders (README, Configuration)"})
			}
		}
	}
	// Derived defaults, as UCS's templates derive them.
	for _, l := range dovecotLimits {
		if v[l.key] != "" {
			continue
		}
		switch {
		case strings.HasSuffix(l.key, "/client_limit"):
			v[l.key] = v["default_client_limit"]
		case strings.HasSuffix(l.key, "/process_limit"):
			v[l.key] = v["default_process_limit"]
		case strings.HasSuffix(l.key, "/vsz_limit"):
			v[l.key] = v["default_vsz_limit"]
		}
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return v, errs
}

func checkLimit(key, val string, kind limitKind) error {
	switch kind {
	case size:
		num := strings.TrimRight(strings.TrimSuffix(strings.TrimSuffix(val, "B"), "b"), "kKmMgGtT")
		if len(val)-len(num) > 2 || !allDigits(num) {
			return &SettingError{Key: key, Value: val, Reason: "want a size such as 256M, 1G or 0 (unlimited)"}
		}
	case atLeastOne, atLeastZero:
		n, err := strconv.ParseUint(val, 10, 32)
		if err != nil || (kind == atLeastOne && n == 0) {
			want := "want a whole number of at least 1"
			if kind == atLeastZero {
				want = "want a whole number of at least 0"
			}
			return &SettingError{Key: key, Value: val, Reason: want}
		}
	}
	return nil
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// dovecotProcessValues returns the NFS settings that are set, as Dovecot
// name and value, in the manual's order.
func dovecotProcessValues(s Settings) ([][2]string, []error) {
	var out [][2]string
	var errs []error
	known := map[string]bool{}
	for _, p := range dovecotProcess {
		key := processPrefix + p.key
		known[key] = true
		val := strings.TrimSpace(s[key])
		if val == "" {
			continue
		}
		if p.allow == nil {
			b, err := s.Bool(key, false)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			val = map[bool]string{true: "yes", false: "no"}[b]
		} else if !contains(p.allow, val) {
			errs = append(errs, &SettingError{Key: key, Value: val, Reason: "want " + strings.Join(p.allow, ", ") + " or unset"})
			continue
		}
		out = append(out, [2]string{p.key, val})
	}
	for k, val := range s {
		if strings.HasPrefix(k, processPrefix) && !known[k] {
			errs = append(errs, &SettingError{Key: k, Value: val, Reason: "unknown setting: want one of the NFS settings mailsync renders (manual 14.7.11)"})
		}
	}
	return out, errs
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// serviceLimits is what the limits fragment sets for one service.
type serviceLimits struct {
	name  string
	lines [][2]string
}

// renderDovecotLimits writes the limits fragment and returns it with the
// fd limit Dovecot's master requires.
func renderDovecotLimits(v map[string]string, f DovecotFacts) (string, int) {
	present := map[string]bool{}
	for _, s := range f.Services {
		present[s.Name] = true
	}
	var set []serviceLimits
	for _, name := range []string{"imap-login", "pop3-login"} {
		set = append(set, serviceLimits{name, [][2]string{
			{"service_count", v[name+"/service_count"]},
			{"process_min_avail", v[name+"/process_min_avail"]},
			{"client_limit", v[name+"/client_limit"]},
			{"vsz_limit", v[name+"/vsz_limit"]},
		}})
	}
	for _, name := range []string{"imap", "pop3"} {
		set = append(set, serviceLimits{name, [][2]string{
			{"process_limit", v[name+"/process_limit"]},
			{"vsz_limit", v[name+"/vsz_limit"]},
		}})
	}
	set = append(set, serviceLimits{"managesieve", [][2]string{{"process_limit", v["managesieve/process_limit"]}}})

	var b strings.Builder
	b.WriteString(renderedHeader("mail/dovecot/limits/* (manual 14.7.12)"))
	fmt.Fprintf(&b, "default_process_limit = %s\ndefault_client_limit = %s\ndefault_vsz_limit = %s\n",
		v["default_process_limit"], v["default_client_limit"], v["default_vsz_limit"])
	ours := map[string]map[string]int{}
	for _, sl := range set {
		if !present[sl.name] {
			continue // not installed here (e.g. no dovecot-pop3d)
		}
		ours[sl.name] = map[string]int{}
		fmt.Fprintf(&b, "\nservice %s {\n", sl.name)
		for _, l := range sl.lines {
			fmt.Fprintf(&b, "  %s = %s\n", l[0], l[1])
			if n, err := strconv.Atoi(l[1]); err == nil {
				ours[sl.name][l[0]] = n
			}
		}
		b.WriteString("}\n")
	}
	if present["managesieve"] {
		fmt.Fprintf(&b, "\nprotocol sieve {\n  mail_max_userip_connections = %s\n}\n", v["managesieve/mail_max_userip_connections"])
	}

	defProc, _ := strconv.Atoi(v["default_process_limit"])
	defClient, _ := strconv.Atoi(v["default_client_limit"])
	floorAuth, _ := strconv.Atoi(v["auth/client_limit"])
	floorAnvil, _ := strconv.Atoi(v["anvil/client_limit"])
	req := dovecotRequired(f, ours, defProc)
	auth, anvil := max(floorAuth, req.auth), max(floorAnvil, req.anvil)
	fmt.Fprintf(&b, "\n# Each process of these services may hold a connection to auth:\n#   %s\n", strings.Join(req.authFrom, " + "))
	fmt.Fprintf(&b, "service auth {\n  client_limit = %d\n}\n", auth)
	fmt.Fprintf(&b, "\n# anvil: its two pipes and a connection from each process of\n#   %s\n", strings.Join(req.anvilFrom, " + "))
	fmt.Fprintf(&b, "service anvil {\n  client_limit = %d\n}\n", anvil)

	// The master's fd check: the largest client_limit of an enabled
	// service, default_client_limit included (Dovecot 2.3 master-settings.c).
	nofile := max(defClient, auth, anvil, req.maxClient)
	return b.String(), nofile
}

// required is what Dovecot 2.3's master_settings_verify computes from the
// enabled services: the auth and anvil client_limit under max. load and the
// largest client_limit set on a service.
type required struct {
	auth, anvil         int
	authFrom, anvilFrom []string
	maxClient           int
}

// dovecotRequired follows Dovecot 2.3's check over the installed services
// with the limits this fragment sets (ours) applied on top.
func dovecotRequired(f DovecotFacts, ours map[string]map[string]int, defProc int) required {
	r := required{anvil: 2}
	for _, s := range f.Services {
		if s.Protocol != "" && !contains(f.Protocols, s.Protocol) {
			continue // protocol not enabled: Dovecot ignores the service
		}
		pl, cl, sc := s.ProcessLimit, s.ClientLimit, s.ServiceCount
		if o, ok := ours[s.Name]; ok {
			if n, ok := o["process_limit"]; ok {
				pl = n
			}
			if n, ok := o["client_limit"]; ok {
				cl = n
			}
			if n, ok := o["service_count"]; ok {
				sc = n
			}
		}
		if pl == 0 {
			pl = defProc
		}
		if s.Name != "auth" && s.Name != "anvil" {
			r.maxClient = max(r.maxClient, cl)
		}
		term := fmt.Sprintf("%s %d", s.Name, pl)
		// Each imap/pop3/lmtp process can hold an auth connection; with
		// service_count=1 only briefly, except login processes.
		if s.Protocol != "" && (sc != 1 || s.Type == "login") && s.Name != "imap-hibernate" {
			r.auth += pl
			r.authFrom = append(r.authFrom, term)
		}
		if s.Type == "login" || s.Name == "auth" {
			r.anvil += pl
			r.anvilFrom = append(r.anvilFrom, term)
		}
	}
	return r
}
