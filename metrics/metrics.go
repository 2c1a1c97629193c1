// Package metrics exposes what mailsync does for Prometheus
// (prometheus/client_golang) and answers /healthz with the reachability of
// what it depends on: LDAP, NATS and Dovecot. It listens on loopback unless
// configured otherwise.
package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds mailsync's collectors in a registry of its own.
type Metrics struct {
	Registry *prometheus.Registry

	events     *prometheus.CounterVec
	failures   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	lag        *prometheus.GaugeVec
	mapRebuild *prometheus.HistogramVec

	mu     sync.Mutex
	checks map[string]Check
}

// Check reports whether a dependency is reachable.
type Check func(ctx context.Context) error

// New registers mailsync's collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailsync_events_total", Help: "Events handled, by handler and result (applied, dead).",
		}, []string{"handler", "result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailsync_failures_total", Help: "Handler failures by class (retryable, permanent, unclassified).",
		}, []string{"handler", "class"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mailsync_operation_seconds", Help: "Time a handler took to apply one event, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"handler"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailsync_lag_seconds", Help: "From the directory change to its event being applied, last event per handler.",
		}, []string{"handler"}),
		mapRebuild: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mailsync_map_rebuild_seconds", Help: "Time to write and install a Postfix map.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"map"}),
		checks: map[string]Check{},
	}
	m.Registry.MustRegister(m.events, m.failures, m.latency, m.lag, m.mapRebuild,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Applied records an event a handler applied.
func (m *Metrics) Applied(handler string, took, lag time.Duration) {
	m.events.WithLabelValues(handler, "applied").Inc()
	m.latency.WithLabelValues(handler).Observe(took.Seconds())
	m.lag.WithLabelValues(handler).Set(lag.Seconds())
}

// Failed records one failed attempt.
func (m *Metrics) Failed(handler, class string) {
	m.failures.WithLabelValues(handler, class).Inc()
}

// DeadLettered records an event given up on.
func (m *Metrics) DeadLettered(handler string) {
	m.events.WithLabelValues(handler, "dead").Inc()
}

// MapWritten records a map rebuild.
func (m *Metrics) MapWritten(name string, took time.Duration) {
	m.mapRebuild.WithLabelValues(name).Observe(took.Seconds())
}

// AddCheck adds a dependency to /healthz.
func (m *Metrics) AddCheck(name string, c Check) {
	m.mu.Lock()
	m.checks[name] = c
	m.mu.Unlock()
}

// Health runs every check and returns each one's error (nil when fine).
func (m *Metrics) Health(ctx context.Context) map[string]error {
	m.mu.Lock()
	checks := make(map[string]Check, len(m.checks))
	for k, v := range m.checks {
		checks[k] = v
	}
	m.mu.Unlock()
	out := make(map[string]error, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			err := c(cctx)
			mu.Lock()
			out[name] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// Handler serves /metrics and /healthz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		res := m.Health(r.Context())
		body := map[string]string{}
		names := make([]string, 0, len(res))
		for n := range res {
			names = append(names, n)
		}
		sort.Strings(names)
		code := http.StatusOK
		for _, n := range names {
			if err := res[n]; err != nil {
				body[n] = err.Error()
				code = http.StatusServiceUnavailable
			} else {
				body[n] = "ok"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	})
	return mux
}

// Serve listens on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
