package main

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

func cmdVMConsole() *cli.Command {
	return &cli.Command{
		Name:      "console",
		Usage:     "attach to a VM's serial console (Ctrl-] leaves)",
		ArgsUsage: "NAME",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("vm console: give the VM's NAME", 2)
			}
			conn, err := apiClient(c).Console(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			defer conn.Close()
			fd := int(os.Stdin.Fd())
			if old, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
				raw := *old
				raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
				raw.Oflag &^= unix.OPOST
				raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
				raw.Cflag &^= unix.CSIZE | unix.PARENB
				raw.Cflag |= unix.CS8
				raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
				if unix.IoctlSetTermios(fd, unix.TCSETS, &raw) == nil {
					defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
				}
			}
			fmt.Fprintf(os.Stderr, "connected to %s's console; Ctrl-] leaves\r\n", c.Args().First())
			done := make(chan struct{}, 2)
			go func() { io.Copy(os.Stdout, conn); done <- struct{}{} }()
			go func() {
				buf := make([]byte, 1024)
				for {
					n, err := os.Stdin.Read(buf)
					if n > 0 {
						if i := bytes.IndexByte(buf[:n], 0x1d); i >= 0 { // Ctrl-]
							conn.Write(buf[:i])
							break
						}
						if _, err := conn.Write(buf[:n]); err != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				done <- struct{}{}
			}()
			<-done
			fmt.Fprint(os.Stderr, "\r\nleft the console\r\n")
			return nil
		},
	}
}
