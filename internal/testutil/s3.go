package testutil

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// VersitygwEnv names the versitygw binary to use (scripts/install-versitygw
// builds it; scripts/test exports this).
const VersitygwEnv = "FERRY_VERSITYGW"

// S3Server is a real S3 server (versitygw over a temporary directory) on
// a loopback port, for acceptance and store tests.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Dir       string // a subdirectory of Dir is a bucket

	t    testing.TB
	bin  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

// StartS3 starts an S3 server that lives until the test ends. When
// versitygw is missing the test is skipped, or failed under
// FERRY_TEST_REQUIRE_TOOLS=1.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin := os.Getenv(VersitygwEnv)
	if bin == "" {
		bin = RequireTool(t, "versitygw")
	}
	s := &S3Server{AccessKey: "ferrytestaccess", SecretKey: "ferrytestsecret0123456789", Dir: t.TempDir(), t: t, bin: bin, port: FreePort(t)}
	s.Endpoint = "http://127.0.0.1:" + strconv.Itoa(s.port)
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Bucket creates a bucket and returns its name.
func (s *S3Server) Bucket(name string) string {
	s.t.Helper()
	if err := os.MkdirAll(filepath.Join(s.Dir, name), 0o755); err != nil {
		s.t.Fatal(err)
	}
	return name
}

// Start (re)starts the server on its port and waits until it answers.
func (s *S3Server) Start() {
	s.t.Helper()
	if s.cmd != nil {
		return
	}
	cmd := exec.Command(s.bin, "--port", "127.0.0.1:"+strconv.Itoa(s.port), "posix", s.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	log, err := os.Create(filepath.Join(s.t.TempDir(), "versitygw.log"))
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start versitygw: %v", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(s.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.done:
			out, _ := os.ReadFile(log.Name())
			s.t.Fatalf("versitygw exited at start:\n%s", out)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("versitygw did not listen on %d", s.port)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server (the one this test started, by PID) and waits.
func (s *S3Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}
