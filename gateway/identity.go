package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/qtunnel/qtunnel/internal/statedir"
	"github.com/qtunnel/qtunnel/transport"
)

// generatedIdentity returns the self-signed identity of a server whose
// configuration names no certificate files: the one kept in its state
// directory (made there at the first start), so that its pin and its
// stateless-reset key survive restarts; with no state directory (a
// configuration built in code, no $STATE_DIRECTORY), a new one that lives
// as long as the process, which it says.
func (s *Server) generatedIdentity() (tls.Certificate, error) {
	hosts := listenHosts(s.cfg.Listen)
	path := s.cfg.StateDirectory(s.o.configFile)
	if path == "" {
		s.log.Info("server identity generated for this run only: its key, and the pin clients check, change at the next start; to keep them, set state_dir (or tls.cert_file and tls.key_file)")
		return transport.SelfSigned(hosts...)
	}
	d, err := statedir.Open(path)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, how, err := d.Identity(hosts...)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := d.WritePin(c); err != nil {
		// The pin file is for people; the server works without it.
		s.log.Warn("cannot write the pin file in the state directory", "file", d.File(statedir.PinFile), "err", err)
	}
	s.log.Info("server identity "+how.String(), "state_dir", path, "key", d.File(statedir.KeyFile))
	return c, nil
}

// PinMismatchError is what a client's Run returns when the server
// presented a key other than server_pin: it says what changed and what to
// do. errors.Is matches it with transport.ErrPinMismatch.
type PinMismatchError struct {
	// Server is the address the client dialled.
	Server string
	// ConfigFile is the client's configuration file, if known.
	ConfigFile string
	// Err holds the two pins.
	Err *transport.PinMismatchError
}

func (e *PinMismatchError) Error() string {
	where := "the client's configuration"
	if e.ConfigFile != "" {
		where = e.ConfigFile
	}
	return fmt.Sprintf("%v: the server at %s presented key %s, but server_pin is %s; "+
		"if the server was reinstalled or its state directory lost, its identity changed: "+
		`get the new pin from the server's log ("server started ... pin=") or its state directory (%s), `+
		"and update server_pin in %s — or keep the server's identity with state_dir / tls files",
		transport.ErrPinMismatch, e.Server, e.Err.Got, e.Err.Want, statedir.PinFile, where)
}

func (e *PinMismatchError) Unwrap() error { return e.Err }

// pinMismatch returns the client's PinMismatchError for a connection
// error that is a pin mismatch, or nil.
func (c *Client) pinMismatch(err error) *PinMismatchError {
	var pm *transport.PinMismatchError
	if !errors.As(err, &pm) {
		return nil
	}
	return &PinMismatchError{Server: c.cfg.Server, ConfigFile: c.o.configFile, Err: pm}
}
