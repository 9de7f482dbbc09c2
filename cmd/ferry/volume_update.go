package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api"
	"github.com/ferry-io/ferry/gateway/volume"
)

// accessFlags set a volume's iSCSI access control.
func accessFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "chap-user", Usage: "iSCSI CHAP user name initiators must log in with"},
		&cli.StringFlag{Name: "chap-secret", Usage: "iSCSI CHAP secret, 12-255 characters (prefer FERRY_CHAP_SECRET)", EnvVars: []string{"FERRY_CHAP_SECRET"}},
		&cli.StringFlag{Name: "mutual-chap-user", Usage: "user name the target answers mutual CHAP with"},
		&cli.StringFlag{Name: "mutual-chap-secret", Usage: "mutual CHAP secret, different from --chap-secret (prefer FERRY_MUTUAL_CHAP_SECRET)", EnvVars: []string{"FERRY_MUTUAL_CHAP_SECRET"}},
		&cli.StringSliceFlag{Name: "allow-initiator", Usage: "initiator IQN allowed to log in (repeat; default: any)"},
	}
}

// accessUpdate builds an AccessUpdate from accessFlags; nil when none is set.
func accessUpdate(c *cli.Context) *volume.AccessUpdate {
	u := &volume.AccessUpdate{AllowInitiators: c.StringSlice("allow-initiator")}
	str := func(name string) *string {
		if !c.IsSet(name) {
			return nil
		}
		v := c.String(name)
		return &v
	}
	u.CHAPUser, u.CHAPSecret = str("chap-user"), str("chap-secret")
	u.MutualUser, u.MutualSecret = str("mutual-chap-user"), str("mutual-chap-secret")
	if c.Command.Name == "update" {
		u.ClearCHAP, u.ClearAllow = c.Bool("clear-chap"), c.Bool("clear-allow")
	}
	if u.CHAPUser == nil && u.CHAPSecret == nil && u.MutualUser == nil && u.MutualSecret == nil &&
		len(u.AllowInitiators) == 0 && !u.ClearCHAP && !u.ClearAllow {
		return nil
	}
	return u
}

func cmdVolumeUpdate() *cli.Command {
	return &cli.Command{
		Name:      "update",
		Usage:     "change a volume's iSCSI access control",
		UsageText: "ferry volume update NAME [--chap-user U --chap-secret S] [--allow-initiator IQN]... [--clear-chap] [--clear-allow]",
		Description: `Sets who may log in to the volume's iSCSI target. Changes apply to new
logins. Secrets are stored with mode 0600 and never shown or logged.

   FERRY_CHAP_SECRET=0123456789ab ferry volume update vm1 --chap-user alice
   ferry volume update vm1 --allow-initiator iqn.1993-08.org.debian:01:host1
   ferry volume update vm1 --clear-chap --clear-allow`,
		Flags: append(append(apiFlags(), accessFlags()...),
			&cli.BoolFlag{Name: "clear-chap", Usage: "remove CHAP and mutual CHAP settings"},
			&cli.BoolFlag{Name: "clear-allow", Usage: "remove the initiator allow-list"},
			jsonFlag(),
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			u := accessUpdate(c)
			if u == nil {
				return fmt.Errorf("nothing to update: give --chap-user/--chap-secret, --mutual-chap-user/--mutual-chap-secret, --allow-initiator, --clear-chap or --clear-allow")
			}
			in, err := apiClient(c).UpdateVolume(c.Context, name, api.UpdateRequest{ISCSI: u})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(in)
			}
			fmt.Printf("updated volume %s\n", in.Name)
			return nil
		},
	}
}
