package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

// accessFlags set a volume's access control.
func accessFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "allow-address", Usage: "client address or prefix (192.0.2.7, 10.1.0.0/16, ::1) allowed in over NBD and iSCSI (repeat; default: any)"},
		&cli.StringFlag{Name: "chap-user", Usage: "iSCSI CHAP user name initiators must log in with"},
		&cli.StringFlag{Name: "chap-secret", Usage: "iSCSI CHAP secret, 12-255 characters (prefer FERRY_CHAP_SECRET)", EnvVars: []string{"FERRY_CHAP_SECRET"}},
		&cli.StringFlag{Name: "mutual-chap-user", Usage: "user name the target answers mutual CHAP with"},
		&cli.StringFlag{Name: "mutual-chap-secret", Usage: "mutual CHAP secret, 12-255 characters, different from --chap-secret (prefer FERRY_MUTUAL_CHAP_SECRET)", EnvVars: []string{"FERRY_MUTUAL_CHAP_SECRET"}},
		&cli.StringSliceFlag{Name: "allow-initiator", Usage: "iSCSI initiator IQN allowed to log in (repeat; default: any)"},
		&cli.StringSliceFlag{Name: "allow-tls-identity", Usage: "NBD TLS identity allowed in: client certificate common name (needs ferry serve --nbd-tls-ca) or PSK identity (ferry serve --nbd-tls-psk); repeat"},
		&cli.BoolFlag{Name: "iscsi-without-chap", Usage: "serve over iSCSI without CHAP even when the iSCSI listener is off loopback, where CHAP is otherwise required (=false to undo)"},
	}
}

// accessHelp says what protects what; create and update show it.
const accessHelp = `Access control belongs to the volume and holds on every protocol:

   --allow-address    NBD and iSCSI: only clients from these addresses connect.
   --chap-user/...    iSCSI: initiators must log in with CHAP (secrets of
                      12-255 characters; mutual CHAP optional).
   --allow-initiator  iSCSI: only these initiator names log in.
   --allow-tls-identity  NBD: only clients with a certificate of this
                      common name (ferry serve --nbd-tls-ca verifies them)
                      or this PSK identity (ferry serve --nbd-tls-psk);
                      admits NBD clients to a CHAP-protected volume.

An iSCSI listener off loopback requires CHAP: a volume without CHAP of its
own and without the gateway's default CHAP (ferry serve --iscsi-chap-user)
is refused there unless it has --iscsi-without-chap.

NBD cannot check CHAP or initiator names, so a volume with either is not
served over NBD at all unless --allow-address admits the client. A volume
with no rules is open to anyone who reaches the listeners (loopback only by
default); iSCSI logins to it use the gateway's default CHAP when
ferry serve has --iscsi-chap-user. Secrets are stored with mode 0600 and
never shown or logged.`

// accessUpdate builds an AccessUpdate from accessFlags; nil when none is set.
func accessUpdate(c *cli.Context) *wire.AccessUpdate {
	u := &wire.AccessUpdate{AllowInitiators: c.StringSlice("allow-initiator"), AllowAddresses: c.StringSlice("allow-address"),
		AllowTLSIdentities: c.StringSlice("allow-tls-identity")}
	str := func(name string) *string {
		if !c.IsSet(name) {
			return nil
		}
		v := c.String(name)
		return &v
	}
	u.CHAPUser, u.CHAPSecret = str("chap-user"), str("chap-secret")
	u.MutualUser, u.MutualSecret = str("mutual-chap-user"), str("mutual-chap-secret")
	if c.IsSet("iscsi-without-chap") {
		v := c.Bool("iscsi-without-chap")
		u.ISCSIWithoutCHAP = &v
	}
	if c.Command.Name == "update" {
		u.ClearCHAP, u.ClearAllow = c.Bool("clear-chap"), c.Bool("clear-allow")
	}
	if u.Empty() {
		return nil
	}
	return u
}

func cmdVolumeUpdate() *cli.Command {
	return &cli.Command{
		Name:      "update",
		Usage:     "change a volume's access control (NBD and iSCSI)",
		UsageText: "ferry volume update NAME [--allow-address CIDR]... [--chap-user U --chap-secret S] [--allow-initiator IQN]... [--clear-chap] [--clear-allow]",
		Description: accessHelp + `

Changes apply to new connections; connected clients stay. --clear-chap
and --clear-allow remove settings before the other flags add theirs.

   ferry volume update vm1 --allow-address 127.0.0.1 --allow-address 10.1.0.0/16
   FERRY_CHAP_SECRET=0123456789ab ferry volume update vm1 --chap-user alice
   ferry volume update vm1 --allow-initiator iqn.1993-08.org.debian:01:host1
   ferry volume update vm1 --clear-chap --clear-allow`,
		Flags: append(append(apiFlags(), accessFlags()...),
			&cli.BoolFlag{Name: "clear-chap", Usage: "remove CHAP and mutual CHAP settings"},
			&cli.BoolFlag{Name: "clear-allow", Usage: "remove the address and initiator allow-lists"},
			jsonFlag(),
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			u := accessUpdate(c)
			if u == nil {
				return usagef(c, "nothing to update: give --allow-address, --chap-user/--chap-secret, --mutual-chap-user/--mutual-chap-secret, --allow-initiator, --clear-chap or --clear-allow")
			}
			in, err := apiClient(c).UpdateVolume(c.Context, name, wire.UpdateRequest{Access: u})
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
