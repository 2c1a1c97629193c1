package mailbox

// Owner is what a home's marker file (MarkerFile) says about the entry
// that owns it.
type Owner struct {
	UUID    string
	DN      string
	Address string
}

// ReadOwner reads the marker of the home at path; ok is false when the
// home has none (made before mailsync, or by Dovecot on first delivery).
// Read-only: for `mailsync check`.
func ReadOwner(home string) (o Owner, ok bool) {
	m, ok := readMarker(home)
	return Owner(m), ok
}
