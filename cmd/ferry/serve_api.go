package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/ferry-io/ferry/gateway/api"
	"github.com/ferry-io/ferry/internal/apiauth"
)

// apiSecurityFlags guard the admin API: a bearer token, and TLS.
func apiSecurityFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-auth", Value: apiauth.ModeAuto, EnvVars: []string{"FERRY_API_AUTH"},
			Usage: "admin API authentication: auto (a bearer token as soon as any listener is off loopback), token (always), none (never; refused off loopback unless --api-auth-insecure)"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "api-auth-insecure", EnvVars: []string{"FERRY_API_AUTH_INSECURE"},
			Usage: "allow --api-auth none with listeners off loopback (anyone who reaches the API can then manage every volume)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-token-file", EnvVars: []string{"FERRY_API_TOKEN_FILE"},
			Usage: "file holding the API token, created (mode 0600, 256 random bits) on first start (default DATA/api-token)"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "metrics-public", EnvVars: []string{"FERRY_METRICS_PUBLIC"},
			Usage: "serve /metrics without the API token (/healthz and /readyz never need it)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-tls-cert", EnvVars: []string{"FERRY_API_TLS_CERT"},
			Usage: "PEM certificate (chain) for HTTPS on --api-listen; with --api-tls-key"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-tls-key", EnvVars: []string{"FERRY_API_TLS_KEY"},
			Usage: "PEM private key of --api-tls-cert"}),
	}
}

// apiSecurity is what guards the admin API, decided from the flags and
// from whether every listener is on loopback.
type apiSecurity struct {
	// token is required on every path but /healthz, /readyz (and /metrics
	// with --metrics-public); empty means none is required.
	token   string
	open    []string
	tls     *tls.Config
	summary string // for the API listener's protection
}

// planAPISecurity reads the API's security flags. allLoopback says whether
// every listener of the gateway is reachable from this machine only.
func planAPISecurity(c *cli.Context, dataDir string, allLoopback bool, log *slog.Logger) (*apiSecurity, error) {
	s := &apiSecurity{open: []string{"/healthz", "/readyz"}}
	cert, key := c.String("api-tls-cert"), c.String("api-tls-key")
	if (cert == "") != (key == "") {
		return nil, fmt.Errorf("--api-tls-cert and --api-tls-key go together: give both or neither")
	}
	if cert != "" {
		cfg, err := apiauth.ServerTLS(cert, key)
		if err != nil {
			return nil, fmt.Errorf("--api-tls-cert/--api-tls-key: %w", err)
		}
		s.tls = cfg
	}
	useToken, err := apiauth.NeedToken(c.String("api-auth"), c.Bool("api-auth-insecure"), allLoopback)
	if errors.Is(err, apiauth.ErrInsecure) {
		return nil, fmt.Errorf("--api-auth none with a listener off loopback would let anyone who reaches the API manage every volume: drop --api-auth none (a token is then required), or add --api-auth-insecure if the network is trusted")
	}
	if err != nil {
		return nil, err
	}
	if useToken {
		path := c.String("api-token-file")
		if path == "" {
			path = filepath.Join(dataDir, api.TokenFile)
		}
		token, created, err := api.LoadOrCreateToken(path)
		if err != nil {
			return nil, err
		}
		if created {
			log.Info("created the API token; clients pass it with --token-file, --token or FERRY_TOKEN", "file", path)
		}
		s.token = token
		s.summary = "API token (Authorization: Bearer; file " + path + ")"
		if c.Bool("metrics-public") {
			s.open = append(s.open, "/metrics")
			s.summary += "; /metrics open"
		}
	} else if allLoopback {
		s.summary = "loopback only; no API token"
	} else {
		s.summary = "none: anyone who reaches it can manage every volume (--api-auth none --api-auth-insecure)"
	}
	if s.tls != nil {
		s.summary += "; TLS"
	}
	return s, nil
}

// wrap puts the token check in front of h.
func (s *apiSecurity) wrap(h http.Handler) http.Handler {
	if s.token == "" {
		return h
	}
	return api.RequireToken(h, s.token, s.open...)
}
