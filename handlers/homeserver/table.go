package homeserver

import "mailsync/event"

// Table returns the transport map source Load writes for entries on host,
// computed in memory, without postmap or any write. `mailsync check` and
// `mailsync plan` compare with it.
func Table(host string, entries []event.Entry) []byte {
	return render(routesFor(host, entries))
}

// routesFor is the transport route of every entry that has one.
func routesFor(host string, entries []event.Entry) map[string]route {
	routes := make(map[string]route, len(entries))
	for _, e := range entries {
		if addr, home, ok, err := Route(e.Attrs, host); err == nil && ok {
			routes[e.UUID] = route{address: addr, home: home}
		}
	}
	return routes
}
