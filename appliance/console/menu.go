package console

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/ferry-io/ferry/gateway/api/client"
)

// Console is the status screen with its menu on one terminal.
type Console struct {
	Paths Paths
	Sys   System
	In    *bufio.Reader
	Out   io.Writer
	// ReadyWait is how long Run waits for the gateway before the first
	// screen.
	ReadyWait time.Duration
}

const menu = `
  1) static network settings      2) DHCP on every NIC again
  3) rotate the API token         4) set the default iSCSI CHAP secret
  5) restart the gateway          6) shut down
  Enter) refresh
choice: `

// Once prints the status screen once, after waiting up to ReadyWait for
// the gateway to answer.
func (c *Console) Once(ctx context.Context) {
	c.waitReady(ctx)
	Render(c.Out, Gather(ctx, c.Paths, c.Sys))
}

// Run shows the status screen and the menu until ctx ends. At the end of
// input it keeps the last screen (a serial port nobody types on).
func (c *Console) Run(ctx context.Context) error {
	c.Once(ctx)
	for {
		fmt.Fprint(c.Out, menu)
		line, err := c.In.ReadString('\n')
		if errors.Is(err, io.EOF) && line == "" {
			<-ctx.Done()
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if err := c.do(ctx, strings.TrimSpace(line)); err != nil {
			fmt.Fprintf(c.Out, "\n!! %v\n", err)
		}
		Render(c.Out, Gather(ctx, c.Paths, c.Sys))
	}
}

func (c *Console) waitReady(ctx context.Context) {
	if c.ReadyWait <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.ReadyWait)
	defer cancel()
	cl := client.New(c.Paths.API)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for cl.Healthy(ctx) != nil {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Console) ask(prompt, def string) string {
	if def != "" {
		fmt.Fprintf(c.Out, "%s [%s]: ", prompt, def)
	} else {
		fmt.Fprintf(c.Out, "%s: ", prompt)
	}
	line, _ := c.In.ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "" {
		return def
	}
	return line
}

func (c *Console) confirm(prompt string) bool {
	return strings.HasPrefix(strings.ToLower(c.ask(prompt+" (y/N)", "")), "y")
}

func (c *Console) do(ctx context.Context, choice string) error {
	switch choice {
	case "":
		return nil
	case "1":
		return c.static(ctx)
	case "2":
		if !c.confirm("forget the static settings and use DHCP on every NIC") {
			return nil
		}
		if err := ClearStatic(c.Paths); err != nil {
			return err
		}
		return c.Sys.ReloadNetwork(ctx)
	case "3":
		if !c.confirm("rotate the API token (clients with the old one are refused; the gateway restarts)") {
			return nil
		}
		return RotateToken(ctx, c.Paths, c.Sys)
	case "4":
		cur, _ := ReadCHAP(c.Paths)
		user := c.ask("CHAP user", orNone(cur.User, DefaultCHAPUser))
		secret := c.ask("CHAP secret (12-255 characters; empty: a random one)", "")
		if secret == "" {
			var err error
			if secret, err = randomSecret(18); err != nil {
				return err
			}
		}
		if err := WriteCHAP(c.Paths, CHAP{User: user, Secret: secret}); err != nil {
			return err
		}
		fmt.Fprintln(c.Out, "restarting the gateway with the new CHAP secret ...")
		return c.Sys.RestartGateway(ctx)
	case "5":
		fmt.Fprintln(c.Out, "restarting the gateway ...")
		return c.Sys.RestartGateway(ctx)
	case "6":
		if !c.confirm("shut the appliance down") {
			return nil
		}
		return c.Sys.PowerOff(ctx)
	}
	return fmt.Errorf("no choice %q", choice)
}

func (c *Console) static(ctx context.Context) error {
	ifs, err := etherInterfaces()
	if err != nil {
		return err
	}
	def := ""
	if len(ifs) > 0 {
		def = ifs[0]
	}
	s := StaticNet{Interface: c.ask("interface", def)}
	if s.Address, err = netip.ParsePrefix(c.ask("address/prefix (10.0.0.5/24)", "")); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	if g := c.ask("gateway (empty: none)", ""); g != "" {
		if s.Gateway, err = netip.ParseAddr(g); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	for _, d := range strings.Fields(strings.ReplaceAll(c.ask("DNS servers (space separated, empty: none)", ""), ",", " ")) {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return fmt.Errorf("DNS: %w", err)
		}
		s.DNS = append(s.DNS, a)
	}
	if err := WriteStatic(c.Paths, s); err != nil {
		return err
	}
	return c.Sys.ReloadNetwork(ctx)
}

// RotateToken writes a new random API token and restarts the gateway,
// which then accepts only the new one.
func RotateToken(ctx context.Context, p Paths, sys System) error {
	t, err := NewToken()
	if err != nil {
		return err
	}
	if err := WriteToken(p, t); err != nil {
		return fmt.Errorf("API token: %w", err)
	}
	return sys.RestartGateway(ctx)
}

// Firstboot creates what is missing before the gateway starts: it applies
// a NoCloud seed (once per instance-id), then creates the NBD certificate
// and default CHAP credentials unless they exist, and installs the static
// network settings kept on the data disk. It reports each step to out.
func Firstboot(ctx context.Context, p Paths, out io.Writer) error {
	seed, ok, err := FindSeed(ctx)
	if err != nil {
		fmt.Fprintf(out, "ferry firstboot: NoCloud seed unreadable, ignored: %v\n", err)
	}
	if ok {
		done, err := ApplySeed(p, seed, "/")
		for _, d := range done {
			fmt.Fprintf(out, "ferry firstboot: NoCloud %s: %s\n", seed.InstanceID, d)
		}
		if err != nil {
			fmt.Fprintf(out, "ferry firstboot: NoCloud seed %s: %v\n", seed.InstanceID, err)
		}
		if seed.Hostname != "" {
			_ = run(ctx, "hostname", seed.Hostname)
		}
	}
	host, _ := os.Hostname()
	if created, err := EnsureCert(p, host); err != nil {
		return err
	} else if created {
		fp, _ := CertFingerprint(p)
		fmt.Fprintf(out, "ferry firstboot: created the NBD TLS certificate (SHA-256 %s)\n", fp)
	}
	if created, err := EnsureCHAP(p); err != nil {
		return err
	} else if created {
		fmt.Fprintf(out, "ferry firstboot: created the default iSCSI CHAP credentials (user %s)\n", DefaultCHAPUser)
	}
	n, err := RestoreNetwork(p)
	if err != nil {
		return fmt.Errorf("static network settings: %w", err)
	}
	if n > 0 {
		fmt.Fprintf(out, "ferry firstboot: installed %d static network setting(s)\n", n)
	}
	return nil
}
