package testenv

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"
)

// SMTPSink is a small SMTP server on loopback standing for the hosts
// Postfix hands mail to: a relay host (manual 14.7.1) or another user's home
// server (14.7.10). It accepts every message and records it.
type SMTPSink struct {
	Addr string // ip:port
	Host string // its greeting name

	tls      *tls.Config
	user     string
	password string
	l        net.Listener
	wg       sync.WaitGroup

	mu   sync.Mutex
	msgs []SinkMessage
}

// SinkMessage is one message the sink received.
type SinkMessage struct {
	From string
	To   []string
	Data string
	// TLS: the session had switched to TLS (STARTTLS) before MAIL.
	TLS bool
	// AuthUser and AuthPass are the credentials the client authenticated
	// with (AUTH PLAIN or LOGIN), "" without AUTH.
	AuthUser, AuthPass string
}

// SinkOptions tune StartSMTPSink.
type SinkOptions struct {
	// TLS offers STARTTLS with this CA's server certificate.
	TLS *CA
	// User and Password, when set, offer AUTH PLAIN LOGIN and require it
	// before MAIL; any other credentials are refused with 535.
	User, Password string
	// Host is the greeting name (default sink.example.net).
	Host string
	// IP is the loopback address to listen on (default 127.0.0.1); a sink
	// for another home server listens on an address of its own.
	IP string
}

// StartSMTPSink listens on a free port of 127.0.0.1 until the test ends.
func StartSMTPSink(t testing.TB, opts SinkOptions) *SMTPSink {
	t.Helper()
	ip := opts.IP
	if ip == "" {
		ip = "127.0.0.1"
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("smtp sink: %v", err)
	}
	s := &SMTPSink{Addr: l.Addr().String(), Host: opts.Host, l: l, user: opts.User, password: opts.Password}
	if s.Host == "" {
		s.Host = "sink.example.net"
	}
	if opts.TLS != nil {
		s.tls = opts.TLS.ServerTLS(t)
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() { l.Close(); s.wg.Wait() })
	return s
}

// Messages returns what the sink received so far.
func (s *SMTPSink) Messages() []SinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SinkMessage(nil), s.msgs...)
}

// WaitFor waits until a message with subject arrived and returns it.
func (s *SMTPSink) WaitFor(t testing.TB, subject string, timeout time.Duration) SinkMessage {
	t.Helper()
	var found SinkMessage
	Eventually(t, timeout, func() error {
		for _, m := range s.Messages() {
			if strings.Contains(m.Data, "Subject: "+subject+"\r\n") {
				found = m
				return nil
			}
		}
		return fmt.Errorf("sink %s has no message %q (has %d)", s.Addr, subject, len(s.Messages()))
	})
	return found
}

func (s *SMTPSink) serve() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.session(c)
		}()
	}
}

func (s *SMTPSink) session(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	tp := textproto.NewConn(conn)
	reply := func(format string, args ...any) { _ = tp.PrintfLine(format, args...) }
	var (
		msg      SinkMessage
		inTLS    bool
		authUser string
		authPass string
	)
	reply("220 %s ESMTP mailsync test sink", s.Host)
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO", "HELO":
			ext := []string{s.Host, "PIPELINING", "8BITMIME", "SIZE 0"}
			if s.tls != nil && !inTLS {
				ext = append(ext, "STARTTLS")
			}
			if s.user != "" {
				ext = append(ext, "AUTH PLAIN LOGIN")
			}
			for i, e := range ext {
				sep := "-"
				if i == len(ext)-1 {
					sep = " "
				}
				reply("250%s%s", sep, e)
			}
		case "STARTTLS":
			if s.tls == nil || inTLS {
				reply("502 5.5.1 no STARTTLS here")
				continue
			}
			reply("220 2.0.0 go ahead")
			tc := tls.Server(conn, s.tls)
			if err := tc.Handshake(); err != nil {
				return
			}
			conn, inTLS = tc, true
			conn.SetDeadline(time.Now().Add(60 * time.Second))
			tp = textproto.NewConn(conn)
			msg = SinkMessage{}
		case "AUTH":
			u, p, ok := s.auth(tp, arg)
			if !ok || u != s.user || p != s.password {
				reply("535 5.7.8 authentication failed")
				continue
			}
			authUser, authPass = u, p
			reply("235 2.7.0 authenticated")
		case "MAIL":
			if s.user != "" && authUser == "" {
				reply("530 5.7.0 authentication required")
				continue
			}
			msg = SinkMessage{From: addrArg(arg), TLS: inTLS, AuthUser: authUser, AuthPass: authPass}
			reply("250 2.1.0 ok")
		case "RCPT":
			msg.To = append(msg.To, addrArg(arg))
			reply("250 2.1.5 ok")
		case "DATA":
			reply("354 go ahead")
			data, err := io.ReadAll(tp.DotReader())
			if err != nil {
				return
			}
			msg.Data = strings.ReplaceAll(string(data), "\n", "\r\n")
			s.mu.Lock()
			s.msgs = append(s.msgs, msg)
			s.mu.Unlock()
			msg = SinkMessage{TLS: inTLS, AuthUser: authUser, AuthPass: authPass}
			reply("250 2.0.0 queued")
		case "RSET":
			msg = SinkMessage{TLS: inTLS, AuthUser: authUser, AuthPass: authPass}
			reply("250 2.0.0 ok")
		case "NOOP":
			reply("250 2.0.0 ok")
		case "QUIT":
			reply("221 2.0.0 bye")
			return
		default:
			reply("502 5.5.2 unknown command")
		}
	}
}

// auth reads an AUTH PLAIN or LOGIN exchange and returns the credentials.
func (s *SMTPSink) auth(tp *textproto.Conn, arg string) (user, pass string, ok bool) {
	mech, initial, _ := strings.Cut(arg, " ")
	read := func(prompt string) (string, bool) {
		_ = tp.PrintfLine("334 %s", prompt)
		l, err := tp.ReadLine()
		if err != nil {
			return "", false
		}
		b, err := base64.StdEncoding.DecodeString(l)
		return string(b), err == nil
	}
	switch strings.ToUpper(mech) {
	case "PLAIN":
		var raw string
		if initial != "" && initial != "=" {
			b, err := base64.StdEncoding.DecodeString(initial)
			if err != nil {
				return "", "", false
			}
			raw = string(b)
		} else if raw, ok = read(""); !ok {
			return "", "", false
		}
		parts := strings.Split(raw, "\x00")
		if len(parts) != 3 {
			return "", "", false
		}
		return parts[1], parts[2], true
	case "LOGIN":
		if initial != "" {
			b, err := base64.StdEncoding.DecodeString(initial)
			if err != nil {
				return "", "", false
			}
			user = string(b)
		} else if user, ok = read(base64.StdEncoding.EncodeToString([]byte("Username:"))); !ok {
			return "", "", false
		}
		if pass, ok = read(base64.StdEncoding.EncodeToString([]byte("Password:"))); !ok {
			return "", "", false
		}
		return user, pass, true
	}
	return "", "", false
}

// addrArg takes the address out of "FROM:<a@b> SIZE=1".
func addrArg(arg string) string {
	_, rest, _ := strings.Cut(arg, ":")
	rest = strings.TrimSpace(rest)
	if i := strings.IndexByte(rest, '>'); strings.HasPrefix(rest, "<") && i > 0 {
		return strings.ToLower(rest[1:i])
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return ""
	}
	return strings.ToLower(f[0])
}
