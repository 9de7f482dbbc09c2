package console

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/size"
)

// ReadyLine ends the status screen when the gateway answers /healthz;
// NotReadyLine otherwise. Tests wait for them on the serial console.
const (
	ReadyLine    = "FERRY-APPLIANCE: ready"
	NotReadyLine = "FERRY-APPLIANCE: not ready"
)

// Status is what the status screen shows.
type Status struct {
	Hostname     string
	Addresses    []string // "eth0 10.0.2.15/24"
	GatewayState string   // ferry.service: active, failed, ...
	Healthy      error    // nil when /healthz answered
	Gateway      *wire.Status
	GatewayErr   error
	Token        string
	TokenErr     error
	Fingerprint  string
	CHAP         CHAP
	DataDisk     string // "/dev/vdb, 3.9G free of 4.0G" or why there is none
}

// Gather collects the status; it never fails, it records what it could
// not read.
func Gather(ctx context.Context, p Paths, sys System) Status {
	var s Status
	s.Hostname, _ = os.Hostname()
	s.Addresses = addresses()
	s.GatewayState = sys.GatewayState(ctx)
	s.Token, s.TokenErr = ReadToken(p)
	s.Fingerprint, _ = CertFingerprint(p)
	s.CHAP, _ = ReadCHAP(p)
	s.DataDisk = dataDisk(p.Data)
	var opts []client.Option
	if s.Token != "" {
		opts = append(opts, client.WithToken(s.Token))
	}
	c := client.New(p.API, opts...)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if s.Healthy = c.Healthy(cctx); s.Healthy == nil {
		st, err := c.Status(cctx)
		if err != nil {
			s.GatewayErr = err
		} else {
			s.Gateway = &st
		}
	}
	return s
}

// addresses lists the global addresses of the interfaces that are up.
func addresses() []string {
	ifs, err := net.Interfaces()
	if err != nil {
		return []string{"(" + err.Error() + ")"}
	}
	var out []string
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 || i.Flags&net.FlagUp == 0 {
			continue
		}
		as, _ := i.Addrs()
		for _, a := range as {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.IsLinkLocalUnicast() {
				continue
			}
			out = append(out, i.Name+" "+ipn.String())
		}
	}
	return out
}

// etherInterfaces are the non-loopback interfaces.
func etherInterfaces() ([]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 {
			out = append(out, i.Name)
		}
	}
	return out, nil
}

// dataDisk says what is mounted at dir and how full it is.
func dataDisk(dir string) string {
	src := mountSource(dir)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unreadable: " + err.Error()
	}
	free := int64(st.Bavail) * st.Bsize
	total := int64(st.Blocks) * st.Bsize
	if src == "" {
		return fmt.Sprintf("NONE: volumes are on the system disk (%s free); add an empty second disk", size.Format(free))
	}
	return fmt.Sprintf("%s, %s free of %s", src, size.Format(free), size.Format(total))
}

// mountSource is the device mounted exactly at dir, from /proc/self/mounts.
func mountSource(dir string) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	src := ""
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == dir {
			src = f[0] + " (" + f[2] + ")"
		}
	}
	return src
}

// firstIPv4 is the first IPv4 address, for the example URLs.
func (s Status) firstIPv4() string {
	for _, a := range s.Addresses {
		_, cidr, _ := strings.Cut(a, " ")
		ip, _, err := net.ParseCIDR(cidr)
		if err == nil && ip.To4() != nil {
			return ip.String()
		}
	}
	return "ADDRESS"
}

// Render prints the status screen. Its key lines have fixed prefixes
// tests read: "API token:", "NBD certificate SHA-256:", "iSCSI CHAP:",
// and the last line is ReadyLine or NotReadyLine.
func Render(w io.Writer, s Status) {
	ip := s.firstIPv4()
	fmt.Fprintf(w, "\n======== Ferry appliance %s ========\n", s.Hostname)
	fmt.Fprintf(w, "addresses:   %s\n", orNone(strings.Join(s.Addresses, ", "), "none yet (DHCP)"))
	health := "answers /healthz"
	if s.Healthy != nil {
		health = "NOT answering: " + s.Healthy.Error()
	}
	fmt.Fprintf(w, "gateway:     ferry.service %s, %s\n", s.GatewayState, health)
	fmt.Fprintf(w, "data disk:   %s\n", s.DataDisk)
	fmt.Fprintf(w, "API:         http://%s:9809  (ferry --api %s:9809 --token TOKEN ...)\n", ip, ip)
	switch {
	case s.TokenErr != nil:
		fmt.Fprintf(w, "API token:   (unreadable: %v)\n", s.TokenErr)
	case s.Token == "":
		fmt.Fprintf(w, "API token:   (not created yet: the gateway creates it when it starts)\n")
	default:
		fmt.Fprintf(w, "API token: %s\n", s.Token)
	}
	fmt.Fprintf(w, "NBD:         nbd://%s:10809/VOLUME, TLS required\n", ip)
	fmt.Fprintf(w, "NBD certificate SHA-256: %s\n", orNone(s.Fingerprint, "(none)"))
	fmt.Fprintf(w, "iSCSI:       %s:3260, targets iqn.2026-11.io.ferry:VOLUME, CHAP required\n", ip)
	if s.CHAP.User != "" {
		fmt.Fprintf(w, "iSCSI CHAP: user %s secret %s\n", s.CHAP.User, s.CHAP.Secret)
	} else {
		fmt.Fprintf(w, "iSCSI CHAP: (no default; volumes need their own)\n")
	}
	if g := s.Gateway; g != nil {
		p := g.Pool
		fmt.Fprintf(w, "pool:        %d volume(s), %s provisioned, %s allocated\n", p.Volumes, size.Format(p.Provisioned), size.Format(p.Allocated))
		if len(g.Volumes) > 0 {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "  VOLUME\tSIZE\tALLOCATED\tCLIENTS")
			for _, v := range g.Volumes {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\n", v.Name, size.Format(v.Size), size.Format(v.Allocated), len(v.Connections))
			}
			tw.Flush()
		}
	} else if s.GatewayErr != nil {
		fmt.Fprintf(w, "pool:        (status unreadable: %v)\n", s.GatewayErr)
	}
	if s.Healthy == nil {
		fmt.Fprintln(w, ReadyLine)
	} else {
		fmt.Fprintln(w, NotReadyLine)
	}
}

func orNone(s, none string) string {
	if s == "" {
		return none
	}
	return s
}
