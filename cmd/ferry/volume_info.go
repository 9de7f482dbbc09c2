package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

func cmdVolumeInfo() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "show one volume: size, space used, connected clients",
		UsageText: "ferry volume info NAME [--json]",
		Flags:     append(apiFlags(), jsonFlag()),
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
			conns := "none"
			if len(in.Connections) > 0 {
				conns = strings.Join(in.Connections, ", ")
			}
			fmt.Printf("clients:      %s\n", conns)
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
			}
			if a := in.ISCSI; a != nil {
				if a.CHAPUser != "" {
					fmt.Printf("iscsi chap:   user %s", a.CHAPUser)
					if a.MutualUser != "" {
						fmt.Printf(", mutual user %s", a.MutualUser)
					}
					fmt.Println()
				}
				if len(a.AllowInitiators) > 0 {
					fmt.Printf("iscsi allow:  %s\n", strings.Join(a.AllowInitiators, ", "))
				}
			}
			return nil
		},
	}
}
