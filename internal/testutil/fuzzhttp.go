package testutil

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// FuzzRequest is the HTTP request a fuzzer's inputs stand for: methods
// [method mod len(methods)], base+path, body. ok is false when they make
// no request a server could receive (a path that does not parse or does
// not start with "/").
func FuzzRequest(methods []string, method byte, base, path string, body []byte) (r *http.Request, ok bool) {
	r, err := http.NewRequest(methods[int(method)%len(methods)], base+path, bytes.NewReader(body))
	if err != nil || !strings.HasPrefix(r.URL.Path, "/") {
		return nil, false
	}
	return r, true
}

// Stray returns the first entry found in a directory of only that is not
// the one name it maps the directory to, or "" when each holds nothing
// else: the check that a request created nothing outside the directory a
// server was given (only: each parent of it, up to a test's temporary
// directory, mapped to the next step down).
func Stray(only map[string]string) (string, error) {
	for dir, want := range only {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return "", err
		}
		for _, e := range ents {
			if e.Name() != want {
				return filepath.Join(dir, e.Name()), nil
			}
		}
	}
	return "", nil
}
