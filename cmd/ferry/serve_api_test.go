package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// planWith runs planAPISecurity with serve's flags parsed from args.
func planWith(t *testing.T, allLoopback bool, args ...string) (*apiSecurity, error) {
	t.Helper()
	var sec *apiSecurity
	var perr error
	data := t.TempDir()
	app := &cli.App{Flags: serveFlags(), Action: func(c *cli.Context) error {
		sec, perr = planAPISecurity(c, data, allLoopback, slog.New(slog.DiscardHandler))
		return nil
	}}
	if err := app.Run(append([]string{"ferry"}, args...)); err != nil {
		t.Fatal(err)
	}
	return sec, perr
}

func TestAPISecurityDefaults(t *testing.T) {
	// Loopback only: no token unless asked.
	sec, err := planWith(t, true)
	if err != nil || sec.token != "" {
		t.Fatalf("loopback, auto: token %q, err %v; want none", sec.token, err)
	}
	// Any listener off loopback: a token, created 0600.
	sec, err = planWith(t, false)
	if err != nil || len(sec.token) < 40 || !strings.Contains(sec.summary, "API token") {
		t.Fatalf("off loopback, auto: %+v, err %v; want a token", sec, err)
	}
	if sec2, _ := planWith(t, true, "--api-auth", "token"); sec2.token == "" {
		t.Error("--api-auth token on loopback: no token")
	}
	if _, err := planWith(t, false, "--api-auth", "none"); err == nil || !strings.Contains(err.Error(), "--api-auth-insecure") {
		t.Errorf("--api-auth none off loopback: %v; want a refusal", err)
	}
	if sec, err := planWith(t, false, "--api-auth", "none", "--api-auth-insecure"); err != nil || sec.token != "" {
		t.Errorf("--api-auth none --api-auth-insecure: %v", err)
	}
	if _, err := planWith(t, true, "--api-auth", "maybe"); err == nil {
		t.Error("--api-auth maybe accepted")
	}
	if _, err := planWith(t, true, "--api-tls-cert", "x.pem"); err == nil || !strings.Contains(err.Error(), "together") {
		t.Errorf("--api-tls-cert alone: %v", err)
	}
	// An operator's token file is used as it is; a bad one is refused.
	f := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(f, []byte("operator-chosen-token-0123456789\n"), 0o600)
	if sec, err := planWith(t, false, "--api-token-file", f); err != nil || sec.token != "operator-chosen-token-0123456789" {
		t.Errorf("--api-token-file: %+v, %v", sec, err)
	}
	os.WriteFile(f, []byte("has a space in it but long enough\n"), 0o600)
	if _, err := planWith(t, false, "--api-token-file", f); err == nil {
		t.Error("a token with spaces accepted")
	}
}
