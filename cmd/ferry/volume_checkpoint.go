package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func cmdVolumeCheckpoint() *cli.Command {
	return &cli.Command{
		Name:      "checkpoint",
		Usage:     "publish a recovery point of an S3-backed volume now",
		UsageText: "ferry volume checkpoint NAME [--json]",
		Description: `Uploads everything written before the call and publishes a manifest in
S3 describing the volume as of that moment (a crash-consistent image).
Returns once the manifest is in S3, or fails with the reason.`,
		Flags: append(apiFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			r, err := apiClient(c).Checkpoint(c.Context, name)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(r)
			}
			fmt.Printf("recovery point %d of %s published%s\n", r.Sequence, name, chunkCount(r.Chunks))
			return nil
		},
	}
}

// chunkCount is " (N chunks)", or nothing when the gateway did not know
// (a volume still reading its map from the store: -1).
func chunkCount(n int) string {
	if n < 0 {
		return ""
	}
	return fmt.Sprintf(" (%d chunks)", n)
}
