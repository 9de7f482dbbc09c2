package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func cmdVolumeURL() *cli.Command {
	return &cli.Command{
		Name:      "url",
		Usage:     "print the URL clients attach a volume with",
		UsageText: "ferry volume url NAME [--iscsi]",
		Description: `Prints the volume's NBD URL, or with --iscsi its iSCSI URL, alone on a
line, for scripts:

   qemu-img info "$(ferry volume url vm1)"
   nbdcopy "$(ferry volume url vm1)" vm1.img
   iscsi-inq "$(ferry volume url vm1 --iscsi)"`,
		Flags: append(apiFlags(),
			&cli.BoolFlag{Name: "iscsi", Usage: "print the iSCSI URL (iscsi://PORTAL/TARGET/0) instead"},
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			in, err := apiClient(c).Volume(c.Context, name)
			if err != nil {
				return err
			}
			if c.Bool("iscsi") {
				if in.Attach.ISCSI == nil {
					return fmt.Errorf("the gateway does not serve iSCSI (ferry serve --iscsi-listen is empty)")
				}
				fmt.Println(in.Attach.ISCSI.URL)
				return nil
			}
			if in.Attach.NBD == nil {
				return fmt.Errorf("the gateway does not serve NBD (ferry serve --nbd-listen is empty)")
			}
			fmt.Println(in.Attach.NBD.URL)
			return nil
		},
	}
}
