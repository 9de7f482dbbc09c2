package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/ferry-io/ferry/gateway/volume"
)

func init() {
	serveExtensions = append(serveExtensions, serveExtension{
		name: "S3 tier",
		flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "cache-size", Usage: "local cache budget shared by all S3-backed volumes", Value: "1G", EnvVars: []string{"FERRY_CACHE_SIZE"}}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "checkpoint-interval", Usage: "how often changed S3-backed volumes publish a recovery point", Value: 60 * time.Second, EnvVars: []string{"FERRY_CHECKPOINT_INTERVAL"}}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "s3-timeout", Usage: "bound on one S3 request", Value: 60 * time.Second, EnvVars: []string{"FERRY_S3_TIMEOUT"}}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "s3-read-timeout", Usage: "how long a read of data only in S3 waits for an unreachable S3 before failing with EIO", Value: 30 * time.Second, EnvVars: []string{"FERRY_S3_READ_TIMEOUT"}}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "dirty-wait", Usage: "how long a write waits for a cache full of data not yet uploaded before failing with ENOSPC", Value: 60 * time.Second, EnvVars: []string{"FERRY_DIRTY_WAIT"}}),
		},
		configure: func(c *cli.Context, cfg *volume.Config) error {
			n, err := parseSize(c.String("cache-size"))
			if err != nil {
				return fmt.Errorf("--cache-size: %w", err)
			}
			cfg.CacheBytes = n
			cfg.CheckpointInterval = c.Duration("checkpoint-interval")
			cfg.S3Timeout = c.Duration("s3-timeout")
			cfg.FetchTimeout = c.Duration("s3-read-timeout")
			cfg.DirtyWait = c.Duration("dirty-wait")
			return nil
		},
	})
}
