package main

// The cluster's PKI, made with crypto/x509 alone: one CA signs every certificate (servers and
// clients alike). Keys are ECDSA P-256 in PKCS#8 PEM ("PRIVATE KEY"), which Go, rustls (ring) and
// OpenSSL all read. Every file lands in the cluster directory; private keys are 0600.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Names of the files in the cluster directory that other programs may rely on.
const (
	caCert             = "ca.crt"
	caKey              = "ca.key"
	apiserverCert      = "apiserver.crt"
	apiserverKey       = "apiserver.key"
	kubeletClientCert  = "apiserver-kubelet-client.crt" // the API server's identity towards kubelets
	kubeletClientKey   = "apiserver-kubelet-client.key"
	frontProxyCert     = "front-proxy-client.crt" // the API server's identity towards aggregated API servers
	frontProxyKey      = "front-proxy-client.key"
	adminCert          = "admin.crt"
	adminKey           = "admin.key"
	adminKubeconfig    = "admin.kubeconfig"
	saKey              = "sa.key"
	saPub              = "sa.pub"
	kubeletServingCert = "kubelet-serving.crt" // for a node agent's kubelet API on 127.0.0.1
	kubeletServingKey  = "kubelet-serving.key"
	auditPolicy        = "audit-policy.yaml"
	auditLog           = "audit.log"
)

// Identities written into the certificates.
const (
	adminUser         = "autocrane-admin"
	adminGroup        = "system:masters"
	kubeletClientUser = "kube-apiserver-kubelet-client"
	frontProxyUser    = "front-proxy-client" // the only name --requestheader-allowed-names accepts
)

func nodeCertFile(name string) string       { return "node-" + name + ".crt" }
func nodeKeyFile(name string) string        { return "node-" + name + ".key" }
func nodeKubeconfigFile(name string) string { return "node-" + name + ".kubeconfig" }

// apiserverSANs are the names the API server certificate is valid for: loopback, the in-cluster
// service names and the first address of --service-cluster-ip-range (the `kubernetes` Service).
var (
	apiserverDNSNames = []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local"}
	apiserverIPs = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}
)

type keyPair struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	keyPEM  []byte
}

type pki struct {
	dir string
	ca  *keyPair
}

func newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// validity: from an hour ago (clock skew) for a year — test clusters are short-lived.
func validity() (time.Time, time.Time) {
	now := time.Now()
	return now.Add(-time.Hour), now.Add(365 * 24 * time.Hour)
}

// createPKI makes the CA and every certificate `up` needs, for the given node names.
func createPKI(dir string, nodes []string) (*pki, error) {
	p := &pki{dir: dir}
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	notBefore, notAfter := validity()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "autocrane-test-ca"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p.ca = &keyPair{cert: cert, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key, keyPEM: keyPEM}
	if err := p.write(caCert, caKey, p.ca); err != nil {
		return nil, err
	}

	type spec struct {
		cert, key string
		cn        string
		orgs      []string
		server    bool
		dns       []string
		ips       []net.IP
	}
	specs := []spec{
		{apiserverCert, apiserverKey, "kube-apiserver", nil, true, apiserverDNSNames, apiserverIPs},
		{kubeletClientCert, kubeletClientKey, kubeletClientUser, []string{adminGroup}, false, nil, nil},
		{frontProxyCert, frontProxyKey, frontProxyUser, nil, false, nil, nil},
		{adminCert, adminKey, adminUser, []string{adminGroup}, false, nil, nil},
		// One serving certificate for every node agent: they all listen on 127.0.0.1 (distinct
		// ports); the node names are there too in case a Hostname address is dialled.
		{kubeletServingCert, kubeletServingKey, "kubelet-serving", []string{"system:nodes"}, true,
			append([]string{"localhost"}, nodes...), []net.IP{net.ParseIP("127.0.0.1")}},
	}
	for _, n := range nodes {
		specs = append(specs, spec{nodeCertFile(n), nodeKeyFile(n), "system:node:" + n, []string{"system:nodes"}, false, nil, nil})
	}
	for _, s := range specs {
		kp, err := p.issue(s.cn, s.orgs, s.server, s.dns, s.ips)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", s.cert, err)
		}
		if err := p.write(s.cert, s.key, kp); err != nil {
			return nil, err
		}
	}

	// The ServiceAccount token signing key pair (the API server signs, the API server and the
	// controller manager's token controller use the keys).
	saPriv, saPrivPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saPriv.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, saKey), saPrivPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, saPub), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

func keyID(pub *ecdsa.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return sum[:20]
}

func (p *pki) issue(cn string, orgs []string, server bool, dns []string, ips []net.IP) (*keyPair, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	notBefore, notAfter := validity()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
		SubjectKeyId:          keyID(&key.PublicKey),
		AuthorityKeyId:        p.ca.cert.SubjectKeyId,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca.cert, &key.PublicKey, p.ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key, keyPEM: keyPEM}, nil
}

func (p *pki) write(certName, keyName string, kp *keyPair) error {
	if err := writeFile(filepath.Join(p.dir, certName), kp.certPEM, 0o644); err != nil {
		return err
	}
	return writeFile(filepath.Join(p.dir, keyName), kp.keyPEM, 0o600)
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// writeFile writes atomically (temporary file + rename), so a reader polling for the file never
// sees it half written, with the given mode whatever the umask.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// kubeconfig renders a kubeconfig with everything embedded (no file references), so it can be
// copied anywhere.
func (p *pki) kubeconfig(server, user, certFile, keyFile string) ([]byte, error) {
	certPEM, err := os.ReadFile(p.path(certFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(p.path(keyFile))
	if err != nil {
		return nil, err
	}
	b64 := base64.StdEncoding.EncodeToString
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Config
clusters:
- name: autocrane
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %q
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: autocrane
  context:
    cluster: autocrane
    user: %q
    namespace: default
current-context: autocrane
preferences: {}
`, server, b64(p.ca.certPEM), user, b64(certPEM), b64(keyPEM), user)
	return []byte(b.String()), nil
}
