// Package homeserver routes users to their mail home server: the transport
// map (smtp:[home] for users homed elsewhere, as UCS's ldap.transport,
// reference §3.5) and the one rule that says which host is responsible for
// a user's mailbox, used by the mailbox handler too.
package homeserver

import "mailsync/address"

// Responsible reports whether the host with FQDN fqdn keeps the mailbox of
// an entry whose univentionMailHomeServer is home: an empty home server
// means every host (UCS, reference §1.2); otherwise only the named host,
// compared as DNS names (case-insensitive, one trailing dot ignored:
// "Mail.Example.org." is "mail.example.org"). The bare hostname is not
// accepted, as in UCS. Values with white space around them are not trimmed:
// the address rule refuses them before (package address).
func Responsible(home, fqdn string) bool {
	return home == "" || address.SameHost(home, fqdn)
}
