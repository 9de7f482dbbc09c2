// Package apiauth is the bearer-token guard Ferry's HTTP APIs share (the
// gateway's admin API and ferry-kvm's): the token file kept in a daemon's
// data directory, the middleware that checks it, the auto|token|none
// decision from whether the daemon listens off loopback, and reading a
// token on the client side. It imports only the standard library and
// Ferry's stdlib-only packages (gateway/api/wire, internal/atomicfile),
// so a thin binary can link it without any backend.
//
// The rule it serves: loopback unless configured; off loopback, every
// listener is authenticated; secrets are never logged.
package apiauth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/atomicfile"
	"github.com/ferry-io/ferry/internal/jsonapi"
)

// TokenFile is the API token's file name in a daemon's data directory.
const TokenFile = "api-token"

// LoadOrCreateToken returns the API token kept in path, creating the file
// (mode 0600, 256 random bits, 43 characters) when it does not exist yet.
// A token the operator wrote must pass wire.ParseToken. created tells the
// caller to say where the new token is (never the token itself).
func LoadOrCreateToken(path string) (token string, created bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return "", false, err
		}
		token = base64.RawURLEncoding.EncodeToString(raw)
		if err := atomicfile.WriteFile(path, []byte(token+"\n")); err != nil {
			return "", false, fmt.Errorf("API token file: %w", err)
		}
		return token, true, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("API token file: %w", err)
	}
	token, err = wire.ParseToken(b)
	if err != nil {
		return "", false, fmt.Errorf("API token file %s: %w", path, err)
	}
	return token, false, nil
}

// CAConfig is a TLS client configuration trusting the PEM certificate
// authority in file (a client's --api-ca).
func CAConfig(file string) (*tls.Config, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// ServerTLS is an API server's TLS configuration from its PEM certificate
// (chain) and key files (--api-tls-cert, --api-tls-key).
func ServerTLS(cert, key string) (*tls.Config, error) {
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}, nil
}

// ClientToken is the token a client sends, from a --token value (first)
// or a --token-file path: "" when both are empty. flag names the flags in
// errors ("--token").
func ClientToken(value, file, flag string) (string, error) {
	switch {
	case value != "":
		t, err := wire.ParseToken([]byte(value))
		if err != nil {
			return "", fmt.Errorf("%s: %w", flag, err)
		}
		return t, nil
	case file != "":
		t, err := wire.ReadTokenFile(file)
		if err != nil {
			return "", fmt.Errorf("%s-file: %w", flag, err)
		}
		return t, nil
	}
	return "", nil
}

// Messages are the 401 replies' texts: what a client without a token, or
// with a wrong one, is told to do. They name where the token is, never
// the token.
type Messages struct {
	Missing, Wrong string
}

// RequireToken wraps next so that every request carries the header
// "Authorization: Bearer TOKEN", except requests for the paths in open
// (e.g. /healthz), which pass as they are. A request without the token, or
// with a wrong one, gets 401, a WWW-Authenticate header and a
// wire.ErrorResponse with wire.CodeUnauthenticated. The comparison takes
// the same time whatever the token sent.
func RequireToken(next http.Handler, token string, msg Messages, open ...string) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, p := range open {
			if r.URL.Path == p {
				next.ServeHTTP(w, r)
				return
			}
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		if ok && subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		text := msg.Missing
		if ok {
			text = msg.Wrong
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
		jsonapi.WriteJSON(w, http.StatusUnauthorized, wire.ErrorResponse{Error: text, Code: wire.CodeUnauthenticated})
	})
}

// Authentication modes (--api-auth).
const (
	// ModeAuto requires the token as soon as a listener is off loopback.
	ModeAuto = "auto"
	// ModeToken always requires it.
	ModeToken = "token"
	// ModeNone never does; off loopback only with insecure set.
	ModeNone = "none"
)

// ErrInsecure: --api-auth none was asked for with a listener off loopback
// and without the explicit override.
var ErrInsecure = errors.New("--api-auth none with a listener off loopback would let anyone who reaches the API use it: drop --api-auth none (a token is then required), or add --api-auth-insecure if the network is trusted")

// NeedToken decides from an --api-auth mode whether the token is
// required. allLoopback says whether every listener is reachable from
// this machine only; insecure is --api-auth-insecure.
func NeedToken(mode string, insecure, allLoopback bool) (bool, error) {
	switch mode {
	case ModeAuto:
		return !allLoopback, nil
	case ModeToken:
		return true, nil
	case ModeNone:
		if !allLoopback && !insecure {
			return false, ErrInsecure
		}
		return false, nil
	}
	return false, fmt.Errorf("--api-auth %q: use auto, token or none", mode)
}

// IsLoopback reports whether a listen address (host:port, or a bare host)
// is reachable from this machine only. An empty or unspecified host
// (":9810", "0.0.0.0") listens everywhere: not loopback.
func IsLoopback(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
