package s3

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// A server that ignores If-Match (every put succeeds) is told apart from
// one that honours it: CheckConditional says the store cannot fence
// writers, so its volumes get no lease (and cannot move) instead of a
// lease that fences nothing.
func TestCheckConditionalOnAServerThatIgnoresIt(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPut:
			w.Header().Set("ETag", `"same-every-time"`)
			w.WriteHeader(http.StatusOK)
		case http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotImplemented)
		}
	}))
	defer srv.Close()
	s, err := New(Config{Endpoint: srv.URL, Bucket: "bkt", Region: "us-east-1", AccessKey: "ak", SecretKey: "sk"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckConditional(context.Background()); !errors.Is(err, store.ErrNoSwap) {
		t.Fatalf("CheckConditional against a server ignoring If-Match: %v, want ErrNoSwap", err)
	}
}
