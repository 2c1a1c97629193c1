package main

import (
	"context"
	"fmt"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mailsync/config"
	"mailsync/event"
	"mailsync/ldapconn"
	"mailsync/listener"
)

// ldapTimeout bounds each LDAP request of the operator verbs.
const ldapTimeout = 2 * time.Minute

// readDirectory reads every entry mailsync follows straight from the
// directory, with the listener's filter and attributes (package event), as
// the listener would store them. check and resync work from it, so they
// need neither the daemon nor its JetStream.
func readDirectory(ctx context.Context, cfg *config.Config) ([]event.Entry, error) {
	flavor, err := listener.ParseFlavor(cfg.LDAP.Flavor)
	if err != nil {
		return nil, fmt.Errorf("ldap.flavor: %w", err)
	}
	tlsCfg, err := ldapTLS(cfg)
	if err != nil {
		return nil, err
	}
	conn, err := ldapconn.Dial(ctx, ldapconn.Target{URL: cfg.LDAP.URL, StartTLS: cfg.LDAP.StartTLS, TLS: tlsCfg,
		BindDN: cfg.LDAP.BindDN, BindPassword: cfg.LDAP.BindPassword, Timeout: ldapTimeout})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// go-ldap takes no context: closing the connection ends a search.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetTimeout(ldapTimeout)
	// The identity and change id are the listener's (listener.Flavor): on
	// 389-DS the identity is the nsUniqueId; the ownership markers of homes
	// compare it.
	attrs := append(flavor.Attributes(), event.Followed...)
	req := ldap.NewSearchRequest(cfg.LDAP.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		event.Filter, attrs, nil)
	res, err := conn.SearchWithPaging(req, 1000)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("search %s under %s: %w", cfg.LDAP.URL, cfg.LDAP.BaseDN, err)
	}
	out := make([]event.Entry, 0, len(res.Entries))
	for _, e := range res.Entries {
		entry, ok, err := listener.EntryFrom(flavor, e)
		if !ok {
			continue
		}
		if err != nil {
			// Not readable (an ACL hides it): the DN stands in.
			entry.UUID = "dn:" + e.DN
		}
		out = append(out, entry)
	}
	return out, nil
}
