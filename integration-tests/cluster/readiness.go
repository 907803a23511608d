package main

// Readiness probes: plain HTTP(S) requests, polled until they succeed, the component exits, the
// deadline passes or a stop signal arrives.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// clients holds the HTTP clients of the probes.
type clients struct {
	plain    *http.Client // etcd (plain HTTP on loopback)
	insecure *http.Client // controller manager and scheduler: self-signed in-memory serving certs
	admin    *http.Client // API server: verified against the CA, admin client certificate
}

func newClients(p *pki) (*clients, error) {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.cert)
	admin, err := tls.LoadX509KeyPair(p.path(adminCert), p.path(adminKey))
	if err != nil {
		return nil, err
	}
	mk := func(cfg *tls.Config) *http.Client {
		return &http.Client{
			Timeout: 5 * time.Second,
			Transport: &http.Transport{
				TLSClientConfig:   cfg,
				DisableKeepAlives: true,
				Proxy:             nil, // never through an HTTP(S)_PROXY: everything is loopback
			},
		}
	}
	return &clients{
		plain:    mk(nil),
		insecure: mk(&tls.Config{InsecureSkipVerify: true}), //nolint:gosec // loopback health checks only
		admin:    mk(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{admin}}),
	}, nil
}

// get returns the status code and body of a GET.
func get(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, body, err
}

// waitError says why a wait ended without success.
type waitError struct {
	what    string
	exited  *proc // the component exited during the wait
	blame   *proc // on a timeout, the component whose log tells most
	timeout time.Duration
	last    string // the last probe result
}

func (e *waitError) Error() string {
	if e.exited != nil {
		return fmt.Sprintf("%s exited while waiting for %s: %s", e.exited.name, e.what, e.exited.exitDescription())
	}
	return fmt.Sprintf("%s not reached within %s (last probe: %s)", e.what, e.timeout, e.last)
}

// poll calls probe every interval until it reports done, an error-free result is impossible
// (the watched process exited), the timeout passes or ctx is cancelled (a stop signal).
// probe returns (done, description of the last result).
func poll(ctx context.Context, what string, watched []*proc, timeout time.Duration,
	probe func(context.Context) (bool, string)) error {
	deadline := time.Now().Add(timeout)
	interval := 100 * time.Millisecond
	last := "none yet"
	for {
		for _, p := range watched {
			if p.exited() {
				return &waitError{what: what, exited: p}
			}
		}
		if ctx.Err() != nil {
			return errInterrupted
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok, desc := probe(pctx)
		cancel()
		if ok {
			return nil
		}
		last = desc
		if time.Now().After(deadline) {
			return &waitError{what: what, timeout: timeout, last: last}
		}
		select {
		case <-ctx.Done():
			return errInterrupted
		case <-time.After(interval):
		}
		if interval < time.Second {
			interval += 100 * time.Millisecond
		}
	}
}

// statusProbe succeeds when GET url answers 200 (and, if want is not empty, the body contains it).
func statusProbe(c *http.Client, url, want string) func(context.Context) (bool, string) {
	return func(ctx context.Context) (bool, string) {
		code, body, err := get(ctx, c, url)
		if err != nil {
			return false, err.Error()
		}
		b := strings.TrimSpace(string(body))
		if len(b) > 300 {
			b = b[:300] + "…"
		}
		if code != http.StatusOK || (want != "" && !strings.Contains(string(body), want)) {
			return false, fmt.Sprintf("HTTP %d %s", code, b)
		}
		return true, ""
	}
}

type nodeStatus struct {
	Spec struct {
		Taints []struct {
			Key    string `json:"key"`
			Effect string `json:"effect"`
		} `json:"taints"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

// nodeReadyProbe succeeds when the Node exists, is Ready=True and carries neither the
// node.kubernetes.io/not-ready nor the node.kubernetes.io/unreachable taint (the node lifecycle
// controller removes them once it has seen the node Ready).
func nodeReadyProbe(c *http.Client, server, name string) func(context.Context) (bool, string) {
	return func(ctx context.Context) (bool, string) {
		code, body, err := get(ctx, c, server+"/api/v1/nodes/"+name)
		if err != nil {
			return false, err.Error()
		}
		if code == http.StatusNotFound {
			return false, "Node not registered yet"
		}
		if code != http.StatusOK {
			return false, fmt.Sprintf("HTTP %d", code)
		}
		var n nodeStatus
		if err := json.Unmarshal(body, &n); err != nil {
			return false, err.Error()
		}
		ready := "unknown"
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" {
				ready = c.Status
			}
		}
		if ready != "True" {
			return false, "Ready=" + ready
		}
		for _, t := range n.Spec.Taints {
			if t.Key == "node.kubernetes.io/not-ready" || t.Key == "node.kubernetes.io/unreachable" {
				return false, "Ready=True but tainted " + t.Key + ":" + t.Effect
			}
		}
		return true, ""
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cluster up: "+format+"\n", args...)
}

func secs(d time.Duration) string {
	return fmt.Sprintf("%.1f s", d.Seconds())
}
