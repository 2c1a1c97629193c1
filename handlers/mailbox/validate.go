package mailbox

import (
	"mailsync/address"
	"mailsync/event"
)

// refused is why the address rule (package address) refuses a's primary
// address or home server as stored, naming the attribute; nil when it
// accepts both.
func refused(a event.Attrs) error {
	var errs []error
	if v := a.First(event.AttrPrimaryAddress); v != "" {
		if _, err := address.Check(event.AttrPrimaryAddress, v); err != nil {
			errs = append(errs, err)
		}
	}
	if v := a.First(event.AttrHomeServer); v != "" {
		if _, err := address.Host(event.AttrHomeServer, v); err != nil {
			errs = append(errs, err)
		}
	}
	return address.Join(errs...)
}
