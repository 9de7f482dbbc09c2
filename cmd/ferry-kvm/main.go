// Command ferry-kvm is a thin KVM/QEMU manager that runs VMs whose disks
// are Ferry volumes and live-migrates them between hosts: `ferry-kvm
// serve` runs the daemon; `ferry-kvm vm ...` talks to it. See docs/KVM.md.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/internal/buildinfo"
)

func newApp() *cli.App {
	return &cli.App{
		Name:    "ferry-kvm",
		Usage:   "run QEMU/KVM virtual machines on Ferry volumes and live-migrate them",
		Version: buildinfo.Read().Version,
		Description: `Run the daemon next to QEMU, then manage VMs from another shell:

   ferry-kvm serve --gateway 127.0.0.1:9809
   ferry-kvm vm create web --cpus 2 --memory 1G --disk new:web-root:20G --cdrom debian.iso
   ferry-kvm vm start web
   ferry-kvm vm console web          # Ctrl-] leaves
   ferry-kvm vm migrate web --to otherhost:9810`,
		Commands: []*cli.Command{cmdServe(), cmdVM()},
	}
}

func main() {
	if err := newApp().Run(nameLast(os.Args)); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			fmt.Fprintln(os.Stderr, "ferry-kvm:", err)
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "ferry-kvm:", err)
		os.Exit(1)
	}
}

// nameLast lets `ferry-kvm vm CMD NAME --flag ...` work (urfave/cli stops
// parsing flags at the first argument): a NAME right after the vm
// subcommand moves to the end.
func nameLast(args []string) []string {
	out := append([]string(nil), args...)
	for i := 1; i < len(out); i++ {
		if out[i] != "vm" {
			continue
		}
		// Skip vm's own flags (--api ADDR) to the subcommand.
		j := i + 1
		for j < len(out) && strings.HasPrefix(out[j], "-") {
			if !strings.Contains(out[j], "=") {
				j++
			}
			j++
		}
		if j+2 < len(out) && !strings.HasPrefix(out[j+1], "-") && strings.HasPrefix(out[j+2], "-") {
			name := out[j+1]
			out = append(append(out[:j+1:j+1], out[j+2:]...), name)
		}
		break
	}
	return out
}
