package testenv

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"sync"
)

// DoveadmRequests is an HTTP transport to a doveadm HTTP API that keeps,
// for each request sent through it, the user each command names: tests
// see which commands shared a request.
type DoveadmRequests struct {
	mu   sync.Mutex
	reqs [][]string
}

// RoundTrip records the request and sends it on.
func (r *DoveadmRequests) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	var cmds [][]json.RawMessage
	if err := json.Unmarshal(body, &cmds); err != nil {
		return nil, err
	}
	users := make([]string, 0, len(cmds))
	for _, c := range cmds {
		var p struct{ User any }
		if len(c) > 1 {
			_ = json.Unmarshal(c[1], &p)
		}
		switch u := p.User.(type) {
		case string:
			users = append(users, u)
		case []any: // authCacheFlush names a list
			for _, v := range u {
				s, _ := v.(string)
				users = append(users, s)
			}
		default:
			users = append(users, "")
		}
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, users)
	r.mu.Unlock()
	req.Body = io.NopCloser(bytes.NewReader(body))
	return http.DefaultTransport.RoundTrip(req)
}

// Requests returns the users of each request so far, in order.
func (r *DoveadmRequests) Requests() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}
