package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/internal/size"
	"github.com/ferry-io/ferry/kvm/wire"
)

func cmdVMCreate() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "define a VM whose disks are Ferry volumes",
		ArgsUsage: "NAME",
		Description: `Defines a VM (it does not start it). Each --disk is a Ferry volume that
QEMU attaches over NBD; new:NAME:SIZE[:STORE] creates the volume first.

   ferry-kvm vm create web --cpus 2 --memory 1G --disk new:web-root:20G --cdrom debian.iso
   ferry-kvm vm create t --memory 256M --disk vol1 --kernel vmlinuz --initrd initrd --append console=ttyS0`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "cpus", Value: 1, Usage: "virtual CPUs"},
			&cli.StringFlag{Name: "memory", Value: "512M", Usage: "guest RAM `SIZE` (512M, 2G)"},
			&cli.StringSliceFlag{Name: "disk", Usage: "a Ferry volume `VOL`, or new:NAME:SIZE[:STORE] to create one; repeat for more disks"},
			&cli.StringFlag{Name: "cdrom", Usage: "an ISO `FILE` on the daemon's host"},
			&cli.StringFlag{Name: "kernel", Usage: "boot this kernel `FILE` directly"},
			&cli.StringFlag{Name: "initrd", Usage: "with --kernel: this initramfs `FILE`"},
			&cli.StringFlag{Name: "append", Usage: "with --kernel: the kernel command line"},
			&cli.StringFlag{Name: "net", Value: "user", Usage: "user, tap:IF, bridge:BR or none"},
			&cli.StringFlag{Name: "accel", Value: "auto", Usage: "auto (KVM when it works, else TCG), kvm or tcg"},
			&cli.BoolFlag{Name: "autostart", Usage: "start the VM whenever the daemon starts"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("vm create: give the VM's NAME", 2)
			}
			mem, err := size.Parse(c.String("memory"))
			if err != nil {
				return cli.Exit(fmt.Sprintf("--memory: %v", err), 2)
			}
			req := wire.CreateRequest{VMSpec: wire.VMSpec{
				Name: c.Args().First(), CPUs: c.Int("cpus"), MemoryMiB: mem >> 20,
				CDROM: c.String("cdrom"), Kernel: c.String("kernel"), Initrd: c.String("initrd"), Append: c.String("append"),
				Net: c.String("net"), Accel: c.String("accel"), Autostart: c.Bool("autostart"),
			}}
			for _, d := range c.StringSlice("disk") {
				if rest, ok := strings.CutPrefix(d, "new:"); ok {
					f := strings.Split(rest, ":")
					if len(f) < 2 || len(f) > 3 || f[0] == "" {
						return cli.Exit(fmt.Sprintf("--disk %s: want new:NAME:SIZE[:STORE]", d), 2)
					}
					sz, err := size.Parse(f[1])
					if err != nil {
						return cli.Exit(fmt.Sprintf("--disk %s: %v", d, err), 2)
					}
					nd := wire.NewDisk{Name: f[0], Size: sz}
					if len(f) == 3 {
						nd.Store = f[2]
					}
					req.NewDisks = append(req.NewDisks, nd)
					continue
				}
				req.Disks = append(req.Disks, wire.Disk{Volume: d})
			}
			in, err := apiClient(c).Create(c.Context, req)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "created VM %s (%d CPU, %d MiB, %d disk(s)); start it with: ferry-kvm vm start %s\n", in.Name, in.CPUs, in.MemoryMiB, len(in.Disks), in.Name)
			return nil
		},
	}
}
