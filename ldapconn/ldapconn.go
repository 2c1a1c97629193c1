// Package ldapconn opens the connections mailsync makes to the directory:
// the listener's sync search (package listener/syncrepl), its listing of
// 389-DS entries and the operator verbs' searches (go-ldap) all connect,
// upgrade with StartTLS and bind here, the same way.
//
// Open does those steps on the bare connection, before any client speaks
// on it, so one path serves both LDAP clients: go-ldap (Dial) and
// syncrepl, which decodes the sync search itself for speed. Each step is
// bounded by a timeout and by ctx. Its errors name the URL and the bind DN
// (never the password) and are classified once (package fault): a server
// that is down, busy or slow is retryable; an unusable URL, a certificate
// that does not verify, a server refusing StartTLS and refused credentials
// are permanent (a retry sends the same), though a daemon may still retry
// them until an operator fixes the config or the directory.
package ldapconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"mailsync/fault"
)

// Target is a directory and how to reach it.
type Target struct {
	// URL is ldap://, ldaps:// or ldapi:// (a unix socket, its path
	// percent-encoded as the host).
	URL string
	// StartTLS upgrades an ldap:// connection (RFC 4511 §4.14).
	StartTLS bool
	// TLS verifies the server for ldaps and StartTLS; nil means the
	// system roots. Its ServerName defaults to the URL's host.
	TLS *tls.Config
	// BindDN, when set, is bound with BindPassword (simple bind).
	BindDN       string
	BindPassword string
	// Timeout bounds connecting (with the TLS handshake of ldaps), and
	// then StartTLS and the bind together (default 30s).
	Timeout time.Duration
}

const defaultTimeout = 30 * time.Second

// Open connects to t.URL, upgrades the connection with StartTLS when t asks
// for it and binds as t.BindDN when set. The connection it returns is ready
// for an LDAP client's first request after the bind; isTLS says whether it
// is encrypted (ldaps or StartTLS). Message ids 1 and 2 were used and are
// done with, so a client may start its own at 1 (RFC 4511 §4.1.1.1).
func Open(ctx context.Context, t Target) (nc net.Conn, isTLS bool, err error) {
	timeout := t.Timeout
	if timeout == 0 {
		timeout = defaultTimeout
	}
	u, err := parseURL(t.URL)
	if err != nil {
		return nil, false, fault.Permanent(err)
	}
	nc, err = dial(ctx, u, t, timeout)
	if err != nil {
		return nil, false, classify(fmt.Errorf("connect to %s: %w", t.URL, err))
	}
	isTLS = u.Scheme == "ldaps"
	raw := nc // a TLS connection's deadlines are its underlying one's
	defer func() {
		if err != nil {
			raw.Close()
		}
	}()
	// The steps below read and write the bare connection: a deadline
	// bounds them, and ctx ending moves it into the past.
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	raw.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var id int64
	if t.StartTLS {
		if isTLS {
			return nil, false, fault.Permanentf("starttls to %s: the connection is TLS already (ldaps)", t.URL)
		}
		id++
		if err := request(nc, id, startTLSRequest(), ldap.ApplicationExtendedResponse); err != nil {
			return nil, false, classify(fmt.Errorf("starttls to %s: %w", t.URL, ctxErr(ctx, err)))
		}
		tc := tls.Client(nc, tlsConfig(t.TLS, u))
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, false, classify(fmt.Errorf("starttls to %s: handshake: %w", t.URL, ctxErr(ctx, err)))
		}
		nc, isTLS = tc, true
	}
	if t.BindDN != "" {
		id++
		// the password never appears in the error
		if err := request(nc, id, bindRequest(t.BindDN, t.BindPassword), ldap.ApplicationBindResponse); err != nil {
			return nil, false, classify(fmt.Errorf("bind to %s as %s: %w", t.URL, t.BindDN, ctxErr(ctx, err)))
		}
	}
	if !stop() {
		return nil, false, fmt.Errorf("connect to %s: %w", t.URL, ctx.Err())
	}
	raw.SetDeadline(time.Time{})
	return nc, isTLS, nil
}

// Dial is Open with go-ldap's client on the connection, for searches and
// writes. go-ldap takes no context: its caller closes the connection when
// its context ends.
func Dial(ctx context.Context, t Target) (*ldap.Conn, error) {
	nc, isTLS, err := Open(ctx, t)
	if err != nil {
		return nil, err
	}
	c := ldap.NewConn(nc, isTLS)
	c.Start()
	return c, nil
}

func parseURL(raw string) (*url.URL, error) {
	if rest, ok := strings.CutPrefix(raw, "ldapi://"); ok {
		// The socket path is the percent-encoded host, which url.Parse
		// refuses.
		host, _, _ := strings.Cut(rest, "/")
		path, err := url.PathUnescape(host)
		if err != nil {
			return nil, fmt.Errorf("directory URL %q: socket path: %w", raw, err)
		}
		if path == "" {
			path = "/var/run/slapd/ldapi"
		}
		return &url.URL{Scheme: "ldapi", Path: path}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parse directory URL %q: %w", raw, err)
	}
	if u.Scheme != "ldap" && u.Scheme != "ldaps" {
		return nil, fmt.Errorf("directory URL %q: unknown scheme %q (want ldap, ldaps or ldapi)", raw, u.Scheme)
	}
	return u, nil
}

func dial(ctx context.Context, u *url.URL, t Target, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if u.Scheme == "ldapi" {
		return d.DialContext(ctx, "unix", u.Path)
	}
	port := u.Port()
	if port == "" {
		port = "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
	}
	nc, err := d.DialContext(ctx, "tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil || u.Scheme != "ldaps" {
		return nc, err
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tc := tls.Client(nc, tlsConfig(t.TLS, u))
	if err := tc.HandshakeContext(hctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return tc, nil
}

// tlsConfig is cfg (or TLS 1.2 and up with the system roots) naming the
// URL's host as the server when cfg names none.
func tlsConfig(cfg *tls.Config, u *url.URL) *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg != nil {
		tc = cfg.Clone()
	}
	if tc.ServerName == "" {
		tc.ServerName = u.Hostname()
	}
	return tc
}

func startTLSRequest() *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationExtendedRequest, nil, "Extended Request")
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, "1.3.6.1.4.1.1466.20037", "StartTLS"))
	return op
}

func bindRequest(dn, password string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationBindRequest, nil, "Bind Request")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 3, "Version"))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, "User Name"))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, password, "Password"))
	return op
}

// request sends op as message id and reads the answer, which must be a
// response of application tag want: nil for success, else the
// *ldap.Error of its result code. It reads exactly one message, so nothing
// the server sends after it is lost to the client that takes over.
func request(nc net.Conn, id int64, op *ber.Packet, want int) error {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAP Request")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "MessageID"))
	p.AppendChild(op)
	if _, err := nc.Write(p.Bytes()); err != nil {
		return err
	}
	resp, err := ber.ReadPacket(nc)
	if err != nil {
		return err
	}
	if len(resp.Children) < 2 {
		return &ldap.Error{ResultCode: ldap.ErrorUnexpectedResponse, Err: errors.New("malformed response")}
	}
	mid, _ := resp.Children[0].Value.(int64)
	if mid == 0 {
		// An unsolicited notification: the server is about to hang up.
		if err := ldap.GetLDAPError(resp); err != nil {
			return fmt.Errorf("directory sent a notice of disconnection: %w", err)
		}
		return &ldap.Error{ResultCode: ldap.ErrorNetwork, Err: errors.New("directory sent a notice of disconnection")}
	}
	if r := resp.Children[1]; mid != id || r.ClassType != ber.ClassApplication || int(r.Tag) != want {
		return &ldap.Error{ResultCode: ldap.ErrorUnexpectedResponse,
			Err: fmt.Errorf("response to message %d with tag %d, want %d with tag %d", mid, r.Tag, id, want)}
	}
	return ldap.GetLDAPError(resp)
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// classify marks err retryable or permanent where its cause says which;
// other errors stay unclassified (their consumer retries them, bounded).
func classify(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var le *ldap.Error
	if errors.As(err, &le) {
		switch le.ResultCode {
		case ldap.LDAPResultInvalidCredentials, ldap.LDAPResultInappropriateAuthentication,
			ldap.LDAPResultInsufficientAccessRights, ldap.LDAPResultProtocolError,
			ldap.LDAPResultConfidentialityRequired, ldap.LDAPResultStrongAuthRequired,
			ldap.LDAPResultAuthMethodNotSupported, ldap.LDAPResultInvalidDNSyntax:
			return fault.Permanent(err)
		case ldap.LDAPResultBusy, ldap.LDAPResultUnavailable, ldap.LDAPResultUnwillingToPerform,
			ldap.LDAPResultTimeLimitExceeded, ldap.LDAPResultAdminLimitExceeded, ldap.LDAPResultOther,
			ldap.ErrorNetwork, ldap.LDAPResultServerDown, ldap.LDAPResultTimeout, ldap.LDAPResultConnectError:
			return fault.Retryable(err)
		}
		return err
	}
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		rec      tls.RecordHeaderError
	)
	if errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		errors.As(err, &rec) {
		// a certificate that does not verify, or a server that does not
		// speak TLS on this port
		return fault.Permanent(err)
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return fault.Retryable(err)
	}
	return err
}
