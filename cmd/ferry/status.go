package main

import (
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/buildinfo"
)

func cmdStatus() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show the gateway at a glance: version, listeners, pool, stores, volumes",
		UsageText: "ferry status [--json]",
		Description: `One screen about the running gateway: its version and uptime, what it
listens on and what protects each listener, the local pool and the S3
cache, each S3 store and whether it answers now, and every volume with
its clients, upload backlog (dirty) and recovery-point age (RPO).
Exits 0 when the gateway answers, also when a store does not (the
READY line says so; /readyz answers 503 then).

   ferry status
   ferry status --json | jq .ready`,
		Flags: append(apiFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef(c, "status takes no arguments")
			}
			st, err := apiClient(c).Status(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(st)
			}
			return printStatus(os.Stdout, st)
		},
	}
}

func printStatus(out io.Writer, st wire.Status) error {
	fmt.Fprintf(out, "gateway:   %s, up %s (since %s)\n", strings.TrimPrefix(buildinfo.Info(st.Build).String(), "ferry "),
		time.Duration(st.UptimeSeconds*float64(time.Second)), st.Started.Local().Format("2006-01-02 15:04:05"))
	ready := "yes"
	if !st.Ready {
		ready = "NO: a store does not answer (reads of data only in S3 fail)"
	}
	fmt.Fprintf(out, "ready:     %s\n", ready)

	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "\nLISTENER\tADDRESS\tPROTECTION")
	for _, l := range st.Listeners {
		fmt.Fprintf(w, "%s\t%s\t%s\n", l.Protocol, l.Address, l.Protection)
	}
	w.Flush()

	p := st.Pool
	fmt.Fprintf(out, "\npool:      %d volume(s), %s provisioned, %s allocated\n", p.Volumes, formatSize(p.Provisioned), formatSize(p.Allocated))
	for _, d := range p.Dirs {
		fmt.Fprintf(out, "           %s: %s free of %s, %s, snapshots: %s\n", d.Path, formatSize(d.Free), formatSize(d.Total), d.FS, poolSnapshots(d))
	}
	fmt.Fprintf(out, "cache:     %s of %s used, %s dirty (not yet in S3)\n", formatSize(p.Cache.Used), formatSize(p.Cache.Budget), formatSize(p.Cache.Dirty))

	if len(st.Stores) > 0 {
		w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "\nSTORE\tENDPOINT\tBUCKET\tVOLUMES\tREACHABLE")
		for _, s := range st.Stores {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", s.Name, s.Endpoint, s.Bucket, s.Volumes, reachability(s))
		}
		w.Flush()
	} else {
		fmt.Fprintln(out, "stores:    none (every volume is local)")
	}

	if len(st.Volumes) == 0 {
		fmt.Fprintln(out, "volumes:   none (ferry volume create NAME --size 10G)")
		return nil
	}
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "\nVOLUME\tSIZE\tALLOCATED\tBACKEND\tCLIENTS\tDIRTY\tRPO")
	for _, v := range st.Volumes {
		dirty, rpo := "-", "-"
		if t := v.Tier; t != nil {
			dirty = formatSize(t.DirtyBytes)
			rpo = "no point yet"
			if !t.LastCheckpoint.IsZero() {
				rpo = (time.Duration(t.RPOSeconds) * time.Second).String()
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, formatSize(v.Size), formatSize(v.Allocated), backendName(v), clientSummary(v.Connections), dirty, rpo)
	}
	return w.Flush()
}

func reachability(s wire.StoreHealth) string {
	if s.Reachable {
		return "yes"
	}
	return "NO: " + s.Error
}

func backendName(v wire.VolumeInfo) string {
	if v.Tier != nil {
		return "s3:" + v.Tier.Store
	}
	return v.Backend
}

// clientSummary is "none" or a count with the protocols: "3 (2 nbd, 1 iscsi)".
func clientSummary(cs []wire.Client) string {
	if len(cs) == 0 {
		return "none"
	}
	n := map[string]int{}
	for _, c := range cs {
		n[c.Protocol]++
	}
	var parts []string
	for _, p := range slices.Sorted(maps.Keys(n)) {
		parts = append(parts, fmt.Sprintf("%d %s", n[p], p))
	}
	return fmt.Sprintf("%d (%s)", len(cs), strings.Join(parts, ", "))
}
