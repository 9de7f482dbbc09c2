package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func cmdVolumeRelease() *cli.Command {
	return &cli.Command{
		Name:      "release",
		Usage:     "hand an S3-backed volume over to another gateway",
		UsageText: "ferry volume release NAME [--force] [--json]",
		Description: `Stops new writes, uploads everything not yet in S3, publishes a final
recovery point and gives up the volume's writer lease; the volume then
leaves this gateway (its data stays in the bucket). Another gateway on the
same bucket serves it at once with ferry volume adopt. Refused while
clients are connected, unless --force disconnects them first.

   ferry volume release vm1
   # on the other gateway:
   ferry volume adopt cloud vm1`,
		Flags: append(apiFlags(),
			&cli.BoolFlag{Name: "force", Usage: "disconnect connected clients first"},
			jsonFlag(),
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			r, err := apiClient(c).Release(c.Context, name, c.Bool("force"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(r)
			}
			fmt.Printf("released %s: final recovery point %d%s published, writer lease given up\n", name, r.Sequence, chunkCount(r.Chunks))
			return nil
		},
	}
}
