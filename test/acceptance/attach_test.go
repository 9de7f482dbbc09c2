package acceptance

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// putAttachment asks the gateway for host's attachment lease on vol and
// returns the status and body.
func (g *gateway) putAttachment(vol, host string, ttl int) (int, string) {
	g.t.Helper()
	body, _ := json.Marshal(map[string]any{"protocol": "nbd", "ttl_seconds": ttl, "reclaim": true})
	req, err := http.NewRequest(http.MethodPut, "http://"+g.apiAddr+"/v1/volumes/"+vol+"/attachments/"+host, bytes.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	if g.token != "" {
		req.Header.Set("Authorization", "Bearer "+g.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// An attachment whose holder stopped renewing (ferry-kvm or the Docker
// plugin down while its VM or mount runs on) still holds while the
// volume has clients connected, so a second holder cannot take the volume
// from a running writer; it lapses once they disconnect.
func TestAttachmentHeldWhileConnected(t *testing.T) {
	g := startGateway(t)
	g.mustCLI("volume", "create", "held", "--size", "64M")
	if st, body := g.putAttachment("held", "host-a:vm1", 1); st != http.StatusCreated {
		t.Fatalf("attach host-a: %d %s", st, body)
	}
	hold := testutil.Nbdsh(t, "-u", g.uri("held"), "-c", "import time\nwhile True: time.sleep(0.1); h.pread(512, 0)")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { hold.Process.Kill(); hold.Wait() }()
	g.waitConnections("held", 1, 30*time.Second, nil)
	time.Sleep(1500 * time.Millisecond) // host-a's 1 s lease expires unrenewed

	st, body := g.putAttachment("held", "host-b:vm2", 1)
	if st != http.StatusConflict || !strings.Contains(body, "host-a:vm1") || !strings.Contains(body, "client connection(s) open") {
		t.Fatalf("host-b while host-a's client is connected: %d %s", st, body)
	}
	in := g.info("held")
	if len(in.Attachments) != 1 || !in.Attachments[0].Connected {
		t.Fatalf("attachments = %+v, want host-a's, kept by its connection", in.Attachments)
	}
	if out := g.mustCLI("volume", "info", "held"); !strings.Contains(out, "held while its clients stay connected") {
		t.Errorf("volume info does not say why the expired lease holds:\n%s", out)
	}

	hold.Process.Kill()
	hold.Wait()
	g.waitConnections("held", 0, 30*time.Second, nil)
	if st, body := g.putAttachment("held", "host-b:vm2", 20); st != http.StatusCreated {
		t.Fatalf("host-b after host-a's client left: %d %s", st, body)
	}
}
