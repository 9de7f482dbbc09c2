package api

import (
	"net/http"

	"github.com/ferry-io/ferry/internal/apiauth"
)

// TokenFile is the API token's file name in the gateway's data directory.
const TokenFile = apiauth.TokenFile

// LoadOrCreateToken returns the API token kept in path, creating the file
// (mode 0600, 256 random bits, 43 characters) when it does not exist yet.
// A token the operator wrote must pass wire.ParseToken. created tells the
// caller to say where the new token is. See package apiauth.
func LoadOrCreateToken(path string) (token string, created bool, err error) {
	return apiauth.LoadOrCreateToken(path)
}

// gatewayMessages are the gateway's 401 replies.
var gatewayMessages = apiauth.Messages{
	Missing: "this gateway's API needs its token (Authorization: Bearer TOKEN): give the CLI --token, --token-file or FERRY_TOKEN; the gateway keeps it in its data directory's " + TokenFile + " file",
	Wrong:   "the API token sent is not this gateway's (compare with the " + TokenFile + " file in its data directory)",
}

// RequireToken wraps next so that every request carries the header
// "Authorization: Bearer TOKEN", except requests for the paths in open
// (e.g. /healthz), which pass as they are. A request without the token, or
// with a wrong one, gets 401 and wire.CodeUnauthenticated. The comparison
// takes the same time whatever the token sent. See apiauth.RequireToken.
func RequireToken(next http.Handler, token string, open ...string) http.Handler {
	return apiauth.RequireToken(next, token, gatewayMessages, open...)
}
