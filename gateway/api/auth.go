package api

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/atomicfile"
)

// TokenFile is the API token's file name in the gateway's data directory.
const TokenFile = "api-token"

// LoadOrCreateToken returns the API token kept in path, creating the file
// (mode 0600, 256 random bits, 43 characters) when it does not exist yet.
// A token the operator wrote must pass wire.ParseToken. created tells the caller to say where the new token is.
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

// RequireToken wraps next so that every request carries the header
// "Authorization: Bearer TOKEN", except requests for the paths in open
// (e.g. /healthz), which pass as they are. A request without the token, or
// with a wrong one, gets 401 and wire.CodeUnauthenticated. The comparison
// takes the same time whatever the token sent.
func RequireToken(next http.Handler, token string, open ...string) http.Handler {
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
		msg := "this gateway's API needs its token (Authorization: Bearer TOKEN): give the CLI --token, --token-file or FERRY_TOKEN; the gateway keeps it in its data directory's " + TokenFile + " file"
		if ok {
			msg = "the API token sent is not this gateway's (compare with the " + TokenFile + " file in its data directory)"
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
		writeJSON(w, http.StatusUnauthorized, wire.ErrorResponse{Error: msg, Code: wire.CodeUnauthenticated})
	})
}
