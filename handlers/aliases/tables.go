package aliases

import "mailsync/event"

// Tables returns the sources of the three tables (keyed AliasMap,
// MailboxMap, DomainMap) that Load writes for entries, computed in memory
// by the same model, without postmap or any write. `mailsync check` and
// `mailsync plan` compare with it.
func Tables(hostFQDN string, expansionLimit int, entries []event.Entry) map[string][]byte {
	if expansionLimit == 0 {
		expansionLimit = DefaultExpansionLimit
	}
	m := buildModel(hostFQDN, expansionLimit, entries)
	return map[string][]byte{
		AliasMap:   m.aliasT.source(),
		MailboxMap: m.mailboxT.source(),
		DomainMap:  m.domainT.source(),
	}
}
