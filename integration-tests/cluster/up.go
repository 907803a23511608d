package main

// `cluster up`: a whole control plane on loopback for tests. See upUsage for the contract.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const upUsage = `usage: cluster up --dir DIR --kubeconfig PATH [--node-name NAME]... [--wait-node NAME]... [FLAGS]

Creates a PKI in DIR, starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(each a child process of this binary, on free 127.0.0.1 ports, one after the other once the
previous one is healthy), waits until the API server is ready and the "default" ServiceAccount
exists, writes the admin kubeconfig to PATH and prints exactly one line on stdout:

    READY kubeconfig=PATH

Progress goes to stderr. It then runs until SIGTERM, SIGINT or SIGHUP, and stops the components in
reverse order (SIGTERM, then SIGKILL after --stop-grace). Each component has SIGKILL as
parent-death signal, so they also die when this launcher dies, even by SIGKILL; whoever starts
the launcher should likewise give it a parent-death signal (prctl PR_SET_PDEATHSIG). If a
component fails to start or exits later, the last 30 lines of its log are printed and the
launcher stops everything and exits with status 1.

Flags:
  --dir DIR              cluster directory, created if missing (0700); must not hold a previous
                         cluster (ca.crt or etcd/). Holds:
                           ca.crt ca.key                  the CA that signs everything below
                           apiserver.crt/.key             API server serving cert (SANs localhost,
                                                          127.0.0.1, 10.0.0.1, kubernetes.default…)
                           admin.crt/.key admin.kubeconfig  CN=autocrane-admin, O=system:masters
                           node-NAME.crt/.key node-NAME.kubeconfig  CN=system:node:NAME, O=system:nodes
                           kubelet-serving.crt/.key       serving cert for node agents' kubelet API
                                                          (IP 127.0.0.1, DNS localhost + node names)
                           apiserver-kubelet-client.crt/.key  the API server's client cert towards
                                                          kubelets (CN=kube-apiserver-kubelet-client,
                                                          O=system:masters)
                           front-proxy-client.crt/.key    its client cert towards aggregated API
                                                          servers (request-header authentication)
                           sa.key sa.pub                  ServiceAccount token signing key pair
                           audit-policy.yaml audit.log    audit policy (Metadata for all) and log
                           etcd/                          etcd data
                           etcd.log kube-apiserver.log kube-controller-manager.log kube-scheduler.log
                           cluster.json                   ports, URLs and pids, written at READY
                         Private keys are 0600.
  --kubeconfig PATH      where the admin kubeconfig (server https://127.0.0.1:PORT, CA and client
                         cert embedded) is written, last, atomically, just before READY
  --node-name NAME       create node credentials for NAME (repeatable): DIR/node-NAME.kubeconfig,
                         written as soon as the API server is ready (before READY), for a node
                         agent started by someone else
  --wait-node NAME       before READY, also wait until Node NAME is Ready=True and has neither the
                         node.kubernetes.io/not-ready nor the .../unreachable taint (repeatable;
                         implies --node-name NAME). Start the node agent once
                         DIR/node-NAME.kubeconfig exists.
  --start-timeout D      how long each component, and the default ServiceAccount, may take to
                         become ready (default 3m: give a busy 2-core machine time)
  --node-timeout D       how long --wait-node waits for each node (default 3m)
  --stop-grace D         time between SIGTERM and SIGKILL when stopping a component (default 10s)
  --etcd-arg FLAG, --apiserver-arg FLAG, --controller-manager-arg FLAG, --scheduler-arg FLAG
                         extra flag for that component, appended after the launcher's own (so it
                         overrides them), e.g. --apiserver-arg=--v=4 (repeatable)
  -h, --help             this help
`

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type upConfig struct {
	dir, kubeconfig                       string
	nodes, waitNodes                      stringList
	etcdArgs, apiArgs, kcmArgs, schedArgs stringList
	startTimeout, nodeTimeout, stopGrace  time.Duration
}

func parseUpFlags(args []string) (*upConfig, int) {
	c := &upConfig{}
	fs := flag.NewFlagSet("cluster up", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.Usage = func() { fmt.Fprint(os.Stderr, upUsage) }
	fs.StringVar(&c.dir, "dir", "", "")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "")
	fs.Var(&c.nodes, "node-name", "")
	fs.Var(&c.waitNodes, "wait-node", "")
	fs.Var(&c.etcdArgs, "etcd-arg", "")
	fs.Var(&c.apiArgs, "apiserver-arg", "")
	fs.Var(&c.kcmArgs, "controller-manager-arg", "")
	fs.Var(&c.schedArgs, "scheduler-arg", "")
	fs.DurationVar(&c.startTimeout, "start-timeout", 3*time.Minute, "")
	fs.DurationVar(&c.nodeTimeout, "node-timeout", 3*time.Minute, "")
	fs.DurationVar(&c.stopGrace, "stop-grace", 10*time.Second, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0
		}
		return nil, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cluster up: unexpected argument %q\n\n%s", fs.Arg(0), upUsage)
		return nil, 2
	}
	if c.dir == "" || c.kubeconfig == "" {
		fmt.Fprintf(os.Stderr, "cluster up: --dir and --kubeconfig are required\n\n%s", upUsage)
		return nil, 2
	}
	for _, n := range c.waitNodes {
		if !contains(c.nodes, n) {
			c.nodes = append(c.nodes, n)
		}
	}
	for _, n := range c.nodes {
		if !validNodeName(n) {
			fmt.Fprintf(os.Stderr, "cluster up: %q is not a valid node name (lowercase DNS subdomain)\n", n)
			return nil, 2
		}
	}
	return c, -1
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func validNodeName(n string) bool {
	if n == "" || len(n) > 253 || n[0] == '-' || n[0] == '.' || n[len(n)-1] == '-' || n[len(n)-1] == '.' {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// cluster is one run of `up`.
type cluster struct {
	cfg     *upConfig
	self    string
	pki     *pki
	cl      *clients
	procs   []*proc // in start order
	ctx     context.Context
	ports   map[string][]int
	server  string // https://127.0.0.1:PORT
	started time.Time
}

func up(args []string) int {
	cfg, code := parseUpFlags(args)
	if cfg == nil {
		return code
	}
	// Pdeathsig is tied to the forking thread: keep this goroutine (which starts every child) on
	// one thread that lives as long as the process.
	runtime.LockOSThread()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("received %s: stopping", s)
		cancel()
	}()

	c := &cluster{cfg: cfg, ctx: ctx, ports: map[string][]int{}, started: time.Now()}
	err := c.start()
	if err != nil {
		if errors.Is(err, errInterrupted) {
			stopAll(c.procs, cfg.stopGrace)
			logf("stopped before ready")
			return 1
		}
		logf("FAILED: %v", err)
		var we *waitError
		if errors.As(err, &we) && we.exited != nil {
			printTail(we.exited, 30)
		} else if errors.As(err, &we) && we.blame != nil {
			printTail(we.blame, 30)
		}
		stopAll(c.procs, cfg.stopGrace)
		return 1
	}

	// Ready: run until a signal, or until a component exits by itself.
	exited := make(chan *proc, len(c.procs))
	for _, p := range c.procs {
		go func(p *proc) { <-p.done; exited <- p }(p)
	}
	select {
	case <-ctx.Done():
		stopAll(c.procs, cfg.stopGrace)
		logf("all components stopped")
		return 0
	case p := <-exited:
		logf("FAILED: %s exited unexpectedly: %s", p.name, p.exitDescription())
		printTail(p, 30)
		stopAll(c.procs, cfg.stopGrace)
		return 1
	}
}

func (c *cluster) start() error {
	cfg := c.cfg
	var err error
	if c.self, err = os.Executable(); err != nil {
		return err
	}
	if cfg.dir, err = filepath.Abs(cfg.dir); err != nil {
		return err
	}
	if cfg.kubeconfig, err = filepath.Abs(cfg.kubeconfig); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.dir, 0o700); err != nil {
		return err
	}
	for _, old := range []string{caCert, "etcd"} {
		if _, err := os.Stat(filepath.Join(cfg.dir, old)); err == nil {
			return fmt.Errorf("%s already holds a cluster (%s exists): use a fresh directory", cfg.dir, old)
		}
	}
	if err := os.MkdirAll(filepath.Dir(cfg.kubeconfig), 0o755); err != nil {
		return err
	}
	// Component logs of this run only (a leftover log would confuse the failure tails).
	for _, comp := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		_ = os.Remove(filepath.Join(cfg.dir, comp+".log"))
	}

	t := time.Now()
	if c.pki, err = createPKI(cfg.dir, cfg.nodes); err != nil {
		return fmt.Errorf("PKI: %w", err)
	}
	if c.cl, err = newClients(c.pki); err != nil {
		return err
	}
	if err := writeFile(c.pki.path(auditPolicy), []byte(auditPolicyYAML), 0o644); err != nil {
		return err
	}
	logf("PKI and audit policy written to %s (%s)", cfg.dir, secs(time.Since(t)))

	// etcd
	_, err = c.launch("etcd", 2, func(p []int) ([]string, func(context.Context) (bool, string)) {
		client, peer := fmt.Sprintf("http://127.0.0.1:%d", p[0]), fmt.Sprintf("http://127.0.0.1:%d", p[1])
		_ = os.RemoveAll(filepath.Join(cfg.dir, "etcd")) // a failed attempt's data
		args := []string{
			"--name=autocrane",
			"--data-dir=" + filepath.Join(cfg.dir, "etcd"),
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=autocrane=" + peer,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync=true",
		}
		return append(args, cfg.etcdArgs...), statusProbe(c.cl.plain, client+"/health", `"health":"true"`)
	})
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", c.ports["etcd"][0])

	// kube-apiserver
	_, err = c.launch("kube-apiserver", 1, func(p []int) ([]string, func(context.Context) (bool, string)) {
		c.server = fmt.Sprintf("https://127.0.0.1:%d", p[0])
		args := []string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(p[0]),
			"--advertise-address=127.0.0.1",
			"--endpoint-reconciler-type=none",
			"--tls-cert-file=" + c.pki.path(apiserverCert),
			"--tls-private-key-file=" + c.pki.path(apiserverKey),
			"--client-ca-file=" + c.pki.path(caCert),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + c.pki.path(saPub),
			"--service-account-signing-key-file=" + c.pki.path(saKey),
			"--service-cluster-ip-range=10.0.0.0/24",
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--audit-policy-file=" + c.pki.path(auditPolicy),
			"--audit-log-path=" + c.pki.path(auditLog),
			"--kubelet-certificate-authority=" + c.pki.path(caCert),
			"--kubelet-client-certificate=" + c.pki.path(kubeletClientCert),
			"--kubelet-client-key=" + c.pki.path(kubeletClientKey),
			// The request-header (front proxy) configuration: the controller manager and the
			// scheduler read it from kube-system/extension-apiserver-authentication and log an
			// error every few seconds while it is missing. Same CA, but only the CN
			// front-proxy-client may assert identities through the X-Remote-* headers.
			"--requestheader-client-ca-file=" + c.pki.path(caCert),
			"--requestheader-allowed-names=" + frontProxyUser,
			"--requestheader-username-headers=X-Remote-User",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--proxy-client-cert-file=" + c.pki.path(frontProxyCert),
			"--proxy-client-key-file=" + c.pki.path(frontProxyKey),
			// Node agents report InternalIP 127.0.0.1 (and a Hostname that does not resolve).
			"--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
		}
		return append(args, cfg.apiArgs...), statusProbe(c.cl.admin, c.server+"/readyz", "")
	})
	if err != nil {
		return err
	}

	// Kubeconfigs: the admin one (for the controller manager and scheduler; the --kubeconfig copy
	// comes last) and one per node, for node agents started meanwhile.
	admin, err := c.pki.kubeconfig(c.server, adminUser, adminCert, adminKey)
	if err != nil {
		return err
	}
	if err := writeFile(c.pki.path(adminKubeconfig), admin, 0o600); err != nil {
		return err
	}
	for _, n := range cfg.nodes {
		kc, err := c.pki.kubeconfig(c.server, "system:node:"+n, nodeCertFile(n), nodeKeyFile(n))
		if err != nil {
			return err
		}
		if err := writeFile(c.pki.path(nodeKubeconfigFile(n)), kc, 0o600); err != nil {
			return err
		}
		logf("node credentials for %s: %s", n, c.pki.path(nodeKubeconfigFile(n)))
	}

	// kube-controller-manager
	adminKC := c.pki.path(adminKubeconfig)
	_, err = c.launch("kube-controller-manager", 1, func(p []int) ([]string, func(context.Context) (bool, string)) {
		args := []string{
			"--kubeconfig=" + adminKC,
			"--authentication-kubeconfig=" + adminKC,
			"--authorization-kubeconfig=" + adminKC,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(p[0]),
			"--leader-elect=false",
			"--service-account-private-key-file=" + c.pki.path(saKey),
			"--root-ca-file=" + c.pki.path(caCert),
			"--use-service-account-credentials=false",
			"--cluster-signing-cert-file=" + c.pki.path(caCert),
			"--cluster-signing-key-file=" + c.pki.path(caKey),
			// Else it creates /usr/libexec/kubernetes/kubelet-plugins/volume/exec/ on the host.
			"--flex-volume-plugin-dir=" + filepath.Join(cfg.dir, "flexvolume"),
		}
		return append(args, cfg.kcmArgs...), statusProbe(c.cl.insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", p[0]), "")
	})
	if err != nil {
		return err
	}

	// kube-scheduler
	_, err = c.launch("kube-scheduler", 1, func(p []int) ([]string, func(context.Context) (bool, string)) {
		args := []string{
			"--kubeconfig=" + adminKC,
			"--authentication-kubeconfig=" + adminKC,
			"--authorization-kubeconfig=" + adminKC,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(p[0]),
			"--leader-elect=false",
		}
		return append(args, cfg.schedArgs...), statusProbe(c.cl.insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", p[0]), "")
	})
	if err != nil {
		return err
	}

	// The ServiceAccount admission plugin rejects pods until the token controller has created the
	// namespace's "default" ServiceAccount.
	t = time.Now()
	if err := poll(c.ctx, `ServiceAccount default/default`, c.procs, cfg.startTimeout,
		statusProbe(c.cl.admin, c.server+"/api/v1/namespaces/default/serviceaccounts/default", "")); err != nil {
		var we *waitError
		if errors.As(err, &we) && we.exited == nil {
			we.blame = c.procs[2] // the controller manager's serviceaccount controller creates it
		}
		return err
	}
	logf("ServiceAccount default/default exists (%s)", secs(time.Since(t)))

	for _, n := range cfg.waitNodes {
		t = time.Now()
		logf("waiting for Node %s to be Ready and untainted (start its agent with %s)", n, c.pki.path(nodeKubeconfigFile(n)))
		if err := poll(c.ctx, "Node "+n+" Ready", c.procs, cfg.nodeTimeout, nodeReadyProbe(c.cl.admin, c.server, n)); err != nil {
			var we *waitError
			if errors.As(err, &we) && we.exited == nil {
				logf("is a node agent running for %s with %s?", n, c.pki.path(nodeKubeconfigFile(n)))
				we.blame = c.procs[2] // the node lifecycle controller removes the not-ready taint
			}
			return err
		}
		logf("Node %s Ready (%s)", n, secs(time.Since(t)))
	}

	if err := c.writeInfo(); err != nil {
		return err
	}
	if err := writeFile(cfg.kubeconfig, admin, 0o600); err != nil {
		return err
	}
	logf("control plane ready in %s: API server %s, logs %s/*.log, audit log %s",
		secs(time.Since(c.started)), c.server, cfg.dir, c.pki.path(auditLog))
	fmt.Printf("READY kubeconfig=%s\n", cfg.kubeconfig)
	return nil
}

// launch starts a component on nports fresh ports and waits until its probe succeeds; if it
// exits because a port was taken meanwhile, it tries again with new ports (3 attempts).
func (c *cluster) launch(name string, nports int,
	build func(ports []int) ([]string, func(context.Context) (bool, string))) (*proc, error) {
	const attempts = 3
	for attempt := 1; ; attempt++ {
		ports := make([]int, nports)
		for i := range ports {
			p, err := freePort()
			if err != nil {
				return nil, err
			}
			ports[i] = p
		}
		c.ports[name] = ports
		args, probe := build(ports)
		t := time.Now()
		p, err := startProc(c.self, c.cfg.dir, name, args)
		if err != nil {
			return nil, err
		}
		c.procs = append(c.procs, p)
		err = poll(c.ctx, name+" ready", c.procs, c.cfg.startTimeout, probe)
		if err == nil {
			logf("%s ready on 127.0.0.1:%d (%s)", name, ports[0], secs(time.Since(t)))
			return p, nil
		}
		var we *waitError
		if errors.As(err, &we) && we.exited == p && attempt < attempts && portConflict(p) {
			logf("%s could not bind its port (taken meanwhile): retrying with new ports", name)
			c.procs = c.procs[:len(c.procs)-1]
			continue
		}
		if errors.As(err, &we) && we.exited == nil {
			we.blame = p // a timeout: show this component's log
		}
		return nil, err
	}
}

// writeInfo records the endpoints for tools and humans: DIR/cluster.json.
func (c *cluster) writeInfo() error {
	pids := map[string]int{"launcher": os.Getpid()}
	for _, p := range c.procs {
		pids[p.name] = p.cmd.Process.Pid
	}
	info := map[string]any{
		"server":     c.server,
		"kubeconfig": c.cfg.kubeconfig,
		"etcd":       fmt.Sprintf("http://127.0.0.1:%d", c.ports["etcd"][0]),
		"ports":      c.ports,
		"pids":       pids,
		"nodes":      c.cfg.nodes,
		"dir":        c.cfg.dir,
	}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(c.cfg.dir, "cluster.json"), append(b, '\n'), 0o644)
}

// Metadata (who, what, when, response code) for every request; no bodies.
const auditPolicyYAML = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
`
