package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func cmdVolumeInfo() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "show one volume: size, space used, how to attach it, connected clients",
		UsageText: "ferry volume info NAME [--json]",
		Description: `Shows the volume's NBD URL and iSCSI target and portal (what to give
qemu, nbd-client, iscsiadm), its access rules, and every connected
client with its protocol, address, identity (iSCSI initiator name, or
an NBD client's TLS identity: certificate name or PSK user) and since when.

   ferry volume info vm1
   ferry volume info vm1 --json | jq -r .attach.nbd.url`,
		Flags: append(apiFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			in, err := apiClient(c).Volume(c.Context, name)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(in)
			}
			fmt.Printf("name:         %s\n", in.Name)
			fmt.Printf("id:           %s\n", in.ID)
			fmt.Printf("backend:      %s\n", in.Backend)
			fmt.Printf("provisioned:  %s (%d bytes)\n", formatSize(in.Size), in.Size)
			fmt.Printf("allocated:    %s (%d bytes)\n", formatSize(in.Allocated), in.Allocated)
			fmt.Printf("created:      %s\n", in.Created.Format("2006-01-02 15:04:05 MST"))
			printAttach(in)
			if a := in.Access; a != nil {
				fmt.Printf("access:       %s\n", describeAccess(a))
			}
			if t := in.Tier; t != nil {
				fmt.Printf("store:        %s (chunks of %s, %d in S3)\n", t.Store, formatSize(t.ChunkSize), t.StoredChunks)
				fmt.Printf("cache:        %s cached, %s dirty (upload backlog)\n", formatSize(t.CachedBytes), formatSize(t.DirtyBytes))
				if t.LastCheckpoint.IsZero() {
					fmt.Printf("recovery:     no recovery point yet\n")
				} else {
					fmt.Printf("recovery:     last point %s (%.0fs ago)\n", t.LastCheckpoint.Format("2006-01-02 15:04:05 MST"), t.RPOSeconds)
				}
				if t.UploadError != "" {
					fmt.Printf("upload error: %s\n", t.UploadError)
				}
				if h := t.Hydration; h != nil {
					fmt.Printf("hydration:    %s, %s of %s cached (%.0f%%)", h.State, formatSize(h.DoneBytes), formatSize(h.TotalBytes), h.Percent)
					if h.State == "running" {
						fmt.Printf(", %s/s, about %s left", formatSize(int64(h.BytesPerSec)), (time.Duration(h.ETASeconds) * time.Second).String())
					}
					fmt.Println()
				}
				if mi := t.Migration; mi != nil {
					fmt.Printf("migration:    %s\n", describeMigration(mi))
				}
				if l := t.Lease; l != nil {
					switch l.State {
					case "held":
						fmt.Printf("lease:        held, writer generation %d (renewed until %s)\n", l.Generation, l.Expires.Local().Format("15:04:05"))
					default:
						fmt.Printf("lease:        %s, generation %d: this gateway refuses writes to the volume (%s)\n", l.State, l.Generation, l.Error)
					}
				}
			}
			for _, at := range in.Attachments {
				mode := "read-write"
				if at.ReadOnly {
					mode = "read-only"
				}
				lease := "lease until " + at.Expires.Local().Format("15:04:05")
				if at.Connected {
					lease = "lease expired at " + at.Expires.Local().Format("15:04:05") + ", held while its clients stay connected"
				}
				fmt.Printf("held by:      host %s (%s, %s) since %s, %s\n", at.Host, at.Protocol, mode,
					at.Since.Local().Format("2006-01-02 15:04:05"), lease)
			}
			if len(in.Connections) == 0 {
				fmt.Printf("clients:      none\n")
				return nil
			}
			fmt.Printf("clients:      %d\n", len(in.Connections))
			return printClients(os.Stdout, in.Connections, "  ")
		},
	}
}

// printAttach prints how to reach a volume over each protocol served.
func printAttach(in wire.VolumeInfo) {
	if a := in.Attach.NBD; a != nil {
		fmt.Printf("nbd:          %s\n", a.URL)
	}
	if a := in.Attach.ISCSI; a != nil {
		fmt.Printf("iscsi:        %s at portal %s (%s)\n", a.Target, a.Portal, a.URL)
	}
}

// describeAccess says in one line what guards a volume.
func describeAccess(a *wire.AccessView) string {
	var parts []string
	if len(a.AllowAddresses) > 0 {
		parts = append(parts, "addresses "+strings.Join(a.AllowAddresses, ", "))
	}
	if a.CHAPUser != "" {
		s := "iSCSI CHAP user " + a.CHAPUser
		if a.MutualUser != "" {
			s += " (mutual: " + a.MutualUser + ")"
		}
		parts = append(parts, s)
	}
	if len(a.AllowInitiators) > 0 {
		parts = append(parts, "iSCSI initiators "+strings.Join(a.AllowInitiators, ", "))
	}
	if len(a.AllowTLSIdentities) > 0 {
		parts = append(parts, "NBD client certificates "+strings.Join(a.AllowTLSIdentities, ", "))
	}
	if len(a.AllowAddresses) == 0 && len(a.AllowTLSIdentities) == 0 && (a.CHAPUser != "" || len(a.AllowInitiators) > 0) {
		parts = append(parts, "not served over NBD (no address or certificate allow-list)")
	}
	if a.ISCSIWithoutCHAP {
		parts = append(parts, "iSCSI without CHAP even off loopback")
	}
	return strings.Join(parts, "; ")
}

// printClients prints connected clients as a table, each line indented.
func printClients(out *os.File, clients []wire.Client, indent string) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "%sPROTOCOL\tREMOTE\tIDENTITY\tSINCE\n", indent)
	for _, cl := range clients {
		// Who the client proved to be: an iSCSI initiator name, an NBD
		// client's TLS identity (certificate CN or PSK user).
		ini := cl.Initiator
		switch {
		case ini != "":
		case cl.TLSIdentity != "":
			ini = "tls:" + cl.TLSIdentity
		default:
			ini = "-"
		}
		fmt.Fprintf(w, "%s%s\t%s\t%s\t%s (%s ago)\n", indent, cl.Protocol, cl.Remote, ini,
			cl.Since.Local().Format("2006-01-02 15:04:05"), time.Since(cl.Since).Round(time.Second))
	}
	return w.Flush()
}
