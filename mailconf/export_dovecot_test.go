package mailconf

// ParseDoveconf is parseDoveconf, for the external tests.
var ParseDoveconf = parseDoveconf

// DovecotKeys are the settings the Dovecot renderer reads.
func DovecotKeys() []string {
	var keys []string
	for _, l := range dovecotLimits {
		keys = append(keys, limitsPrefix+l.key)
	}
	for _, p := range dovecotProcess {
		keys = append(keys, processPrefix+p.key)
	}
	return keys
}
