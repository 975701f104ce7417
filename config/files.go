package config

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// filePaths returns the settings of c that name files read by the server
// (state_dir is resolved by StateDirectory).
func (c *Server) filePaths() []*string {
	ps := []*string{&c.TLS.CertFile, &c.TLS.KeyFile}
	for i := range c.PublicTLS {
		ps = append(ps, &c.PublicTLS[i].CertFile, &c.PublicTLS[i].KeyFile)
	}
	return ps
}

// filePaths returns the settings of c that name files read by the client.
func (c *Client) filePaths() []*string {
	ps := []*string{&c.TokenFile, &c.ServerCAFile}
	for i := range c.ForwardTLS {
		ps = append(ps, &c.ForwardTLS[i].CertFile, &c.ForwardTLS[i].KeyFile)
	}
	return ps
}

// resolvePaths makes the relative paths among paths relative to dir, the
// directory of the configuration file that names them, so that a file
// next to its configuration is found from any working directory. Absolute
// and empty paths are left alone, and so is everything when dir is the
// working directory itself.
func resolvePaths(dir string, paths []*string) {
	if dir == "." || dir == "" {
		return
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// certPair reports the certificate and key files at path (such as "tls"
// or "public_tls[0]") that cannot be read, each under its own setting, and
// a pair that is not a certificate with its key. Nothing is reported for
// a pair that is not set; Validate reports half a pair.
func (k *checker) certPair(path, certFile, keyFile string) {
	if certFile == "" || keyFile == "" {
		return
	}
	cert, cerr := os.ReadFile(certFile)
	if cerr != nil {
		k.add(path+".cert_file", "%v", cerr)
	}
	key, kerr := os.ReadFile(keyFile)
	if kerr != nil {
		k.add(path+".key_file", "%v", kerr)
	}
	if cerr != nil || kerr != nil {
		return
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		field := ".cert_file"
		if strings.Contains(err.Error(), "key input") {
			field = ".key_file" // "failed to find any PEM data in key input"
		}
		k.add(path+field, "%v", err)
	}
}

func (k *checker) certPairs(path string, cs []CertFiles) {
	for i, c := range cs {
		k.certPair(fmt.Sprintf("%s[%d]", path, i), c.CertFile, c.KeyFile)
	}
}
