package mailbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailsync/internal/testenv"
)

// BenchmarkRename1000 renames 1,000 addresses through the whole pipeline
// (LDAP modify -> listener -> JetStream -> runner -> handler: kick, rename,
// marker, auth cache flush, mailbox create) and measures, per rename, the
// time from the LDAP modify until the message is readable over IMAP at the
// new address. The baseline, in the same run, is the raw work: a rename(2)
// of each home plus one doveadm HTTP call (auth cache flush).
//
// IMAP is read once the home's owner marker names the new address: a login
// at the new address before the move would make Dovecot create an empty
// home there, which the handler then (rightly) refuses to overwrite.
//
//	go test -run '^$' -bench BenchmarkRename1000 -benchtime=1x ./handlers/mailbox/
func BenchmarkRename1000(b *testing.B) {
	const n, workers = 1000, 16
	e := newEnv(b, policy{rename: true}, testenv.DovecotOptions{}, true)
	ldap, dc, p := e.ldap, e.dc, e.p
	dns := make([]string, n)
	for i := range dns {
		dns[i] = ldap.AddUser(b, fmt.Sprintf("b%04d", i), fmt.Sprintf("b%04d@example.org", i), nil)
	}
	waitMarked(b, n, func(i int) (string, string) {
		a := fmt.Sprintf("b%04d@example.org", i)
		return dc.Home(a), a
	})
	p.Settled(b)
	testenv.Parallel(n, workers, func(i int) { dc.Deliver(b, fmt.Sprintf("b%04d@example.org", i), "bench") })
	reader := dc.IMAPReader()

	for iter := 0; iter < b.N; iter++ {
		lat := make([]time.Duration, n)
		start := time.Now()
		b.ResetTimer()
		testenv.Parallel(n, workers, func(i int) {
			addr := fmt.Sprintf("b%04d.%d@example.org", i, iter)
			home := dc.Home(addr)
			t0 := time.Now()
			ldap.Modify(b, dns[i], map[string][]string{"mailPrimaryAddress": {addr}})
			for {
				if markerNames(home, addr) {
					c, err := reader.DialMaster(context.Background(), addr)
					if err == nil {
						sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
						c.Logout().Wait()
						c.Close()
						if err == nil && sel.NumMessages == 1 {
							break
						}
					}
				}
				if time.Since(t0) > time.Minute {
					b.Errorf("%s not readable after a minute", addr)
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
			lat[i] = time.Since(t0)
		})
		total := time.Since(start)
		b.StopTimer()
		waitMarked(b, n, func(i int) (string, string) {
			a := fmt.Sprintf("b%04d.%d@example.org", i, iter)
			return dc.Home(a), a
		})
		p.Settled(b)

		// Baseline: the same homes, rename(2) plus one doveadm call each.
		raw := make([]time.Duration, n)
		rawStart := time.Now()
		testenv.Parallel(n, workers, func(i int) {
			from := dc.Home(fmt.Sprintf("b%04d.%d@example.org", i, iter))
			to := from + "raw"
			t0 := time.Now()
			if err := os.Rename(from, to); err != nil {
				b.Error(err)
			}
			if _, err := e.adm.FlushAuthCache(context.Background()); err != nil {
				b.Error(err)
			}
			raw[i] = time.Since(t0)
			os.Rename(to, from)
		})
		rawTotal := time.Since(rawStart)

		b.ReportMetric(float64(n)/total.Seconds(), "renames/s")
		b.ReportMetric(ms(pct(lat, 50)), "p50-ms")
		b.ReportMetric(ms(pct(lat, 99)), "p99-ms")
		b.ReportMetric(float64(n)/rawTotal.Seconds(), "raw-renames/s")
		b.ReportMetric(ms(pct(raw, 50)), "raw-p50-ms")
		b.ReportMetric(ms(pct(raw, 99)), "raw-p99-ms")
		if dl := deadLetters(b, p); len(dl) > 0 {
			b.Errorf("%d dead letters, first: %s", len(dl), dl[0].Reason)
		}
	}
}

// waitMarked waits (up to 10 minutes) until every home's marker names its
// address: the handler is through with it.
func waitMarked(b testing.TB, n int, home func(i int) (string, string)) {
	testenv.Eventually(b, 10*time.Minute, func() error {
		for i := 0; i < n; i++ {
			if h, a := home(i); !markerNames(h, a) {
				return fmt.Errorf("%s not done", a)
			}
		}
		return nil
	})
}

func markerNames(home, addr string) bool {
	data, err := os.ReadFile(filepath.Join(home, ".mailsync-owner"))
	if err != nil {
		return false
	}
	var m struct{ Address string }
	return json.Unmarshal(data, &m) == nil && m.Address == addr
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
