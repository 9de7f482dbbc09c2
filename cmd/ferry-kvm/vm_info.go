package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"
)

func cmdVMInfo() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "show a VM: state, QEMU pid, disks and how they are attached, uptime, migration",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("vm info: give the VM's NAME", 2)
			}
			v, err := apiClient(c).Info(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			w := c.App.Writer
			if c.Bool("json") {
				e := json.NewEncoder(w)
				e.SetIndent("", "  ")
				return e.Encode(v)
			}
			fmt.Fprintf(w, "name:     %s\nhost:     %s\nstate:    %s\n", v.Name, v.Host, v.State)
			if v.PID != 0 {
				fmt.Fprintf(w, "pid:      %d\n", v.PID)
			}
			if v.UptimeSeconds > 0 {
				fmt.Fprintf(w, "uptime:   %s\n", (time.Duration(v.UptimeSeconds) * time.Second).String())
			}
			fmt.Fprintf(w, "cpus:     %d\nmemory:   %d MiB\naccel:    %s\nnet:      %s\nautostart: %v\n", v.CPUs, v.MemoryMiB, v.Accel, v.Net, v.Autostart)
			if v.Kernel != "" {
				fmt.Fprintf(w, "kernel:   %s\ninitrd:   %s\nappend:   %s\n", v.Kernel, v.Initrd, v.Append)
			}
			if v.CDROM != "" {
				fmt.Fprintf(w, "cdrom:    %s\n", v.CDROM)
			}
			for _, d := range v.Disks {
				fmt.Fprintf(w, "disk:     %s  volume %s  held as %s  %s\n", d.Device, d.Volume, d.Holder, d.Attach)
			}
			if v.LastError != "" {
				fmt.Fprintf(w, "error:    %s\n", v.LastError)
			}
			if m := v.Migration; m != nil {
				fmt.Fprintf(w, "migration: %s to %s, %s transferred", m.Status, m.To, mib(m.TransferredBytes))
				if m.Status == "completed" {
					fmt.Fprintf(w, ", downtime %d ms, total %d ms", m.DowntimeMS, m.TotalMS)
				}
				if m.Error != "" {
					fmt.Fprintf(w, ": %s", m.Error)
				}
				fmt.Fprintln(w)
				if m.Handover != "" {
					fmt.Fprintf(w, "volumes:  %s\n", m.Handover)
				}
			}
			return nil
		},
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
