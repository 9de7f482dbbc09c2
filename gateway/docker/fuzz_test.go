package docker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/internal/testutil"
)

// refusingAttacher attaches nothing, so that a fuzzed Mount never formats
// or mounts: everything up to the attachment runs for real.
type refusingAttacher struct{}

func (refusingAttacher) Method() string { return "refused" }
func (refusingAttacher) Attach(context.Context, AttachSpec) (*Attachment, error) {
	return nil, errors.New("the fuzzer attaches nothing")
}
func (refusingAttacher) Detach(context.Context, *Attachment) error  { return nil }
func (refusingAttacher) Healthy(context.Context, *Attachment) error { return nil }

// FuzzPluginHandler sends arbitrary requests to the volume plugin's
// handler, over a driver on the package's gateway: whatever the method,
// endpoint and body, every reply must be a JSON object of Docker's media
// type, carry an Err exactly when it is not a 200, and never come from a
// recovered panic; nothing may be created beside the driver's state
// directory (a volume name walking out of the mount root).
func FuzzPluginHandler(f *testing.F) {
	base := f.TempDir()
	state := filepath.Join(base, "a", "b", "state")
	d, err := NewDriver(context.Background(), Config{Gateway: client.New(gwURL), StateDir: state, MountRoot: filepath.Join(state, "mounts"),
		HostID: "fuzz", Attacher: refusingAttacher{}, StaleCheck: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(d.Close)
	h := Handler(d, nil)

	for _, s := range []struct {
		method byte
		path   string
		body   string
	}{
		{1, "/Plugin.Activate", ""},
		{1, "/VolumeDriver.Capabilities", ""},
		{1, "/VolumeDriver.Create", `{"Name":"f1","Opts":{"size":"16M"}}`},
		{1, "/VolumeDriver.Create", `{"Name":"f2","Opts":{"size":"1M","fstype":"xfs","readonly":"true"}}`},
		{1, "/VolumeDriver.Create", `{"Name":"f3","Opts":{"from":"f1","store":"s3"}}`},
		{1, "/VolumeDriver.Create", `{"Name":"../../x","Opts":{"size":"-1"}}`},
		{1, "/VolumeDriver.Create", `{"Name":"f4","Opts":{"size":"9E","fstype":"btrfs","bogus":"1"}}`},
		{1, "/VolumeDriver.Get", `{"Name":"f1"}`},
		{1, "/VolumeDriver.List", `{}`},
		{1, "/VolumeDriver.Path", `{"Name":"f1"}`},
		{1, "/VolumeDriver.Mount", `{"Name":"f1","ID":"c1"}`},
		{1, "/VolumeDriver.Unmount", `{"Name":"f1","ID":"c1"}`},
		{1, "/VolumeDriver.Remove", `{"Name":"f1"}`},
		{1, "/VolumeDriver.Remove", `{"Name":""}`},
		{1, "/VolumeDriver.Mount", `{"Name":"..","ID":""}`},
		{1, "/VolumeDriver.Get", `[`},
		{0, "/VolumeDriver.List", ""},
		{1, "/VolumeDriver.Snapshot", `{}`},
	} {
		f.Add(s.method, s.path, []byte(s.body))
	}
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete}
	f.Fuzz(func(t *testing.T, method byte, path string, body []byte) {
		r, ok := testutil.FuzzRequest(methods, method, "http://plugin", path, body)
		if !ok {
			return
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if ct := w.Header().Get("Content-Type"); ct != ContentType {
			t.Fatalf("%s %s %q: Content-Type %q", r.Method, path, body, ct)
		}
		var reply map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &reply); err != nil {
			t.Fatalf("%s %s %q: %d, the reply is not a JSON object: %v\n%s", r.Method, path, body, w.Code, err, w.Body)
		}
		e, _ := reply["Err"].(string)
		switch {
		case strings.HasPrefix(e, "internal error"):
			t.Fatalf("%s %s %q: a panic: %s", r.Method, path, body, e)
		case w.Code == http.StatusOK && e != "", w.Code != http.StatusOK && e == "":
			t.Fatalf("%s %s %q: %d with Err %q", r.Method, path, body, w.Code, e)
		}
		if p, err := testutil.Stray(map[string]string{base: "a", filepath.Join(base, "a"): "b", filepath.Join(base, "a", "b"): "state"}); err != nil || p != "" {
			t.Fatalf("%s %s %q: created %s beside the state directory (%v)", r.Method, path, body, p, err)
		}
	})
}
