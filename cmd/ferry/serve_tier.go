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
			altsrc.NewIntFlag(&cli.IntFlag{Name: "readahead", Usage: "chunks fetched ahead of a sequential reader of an S3-backed volume (0: none, and every read of a chunk not cached fetches it into the cache)", Value: 8, EnvVars: []string{"FERRY_READAHEAD"}}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "stream-memory", Usage: "memory for chunks held for sequential readers, over all volumes (0 reads them through the cache)", Value: "64M", EnvVars: []string{"FERRY_STREAM_MEMORY"}}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "lease-ttl", Usage: "how long a renewal of an S3-backed volume's writer lease holds (renewed every third of it; writes stop when it was not renewed by two thirds)", Value: 30 * time.Second, EnvVars: []string{"FERRY_LEASE_TTL"}}),
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
			if cfg.LeaseTTL = c.Duration("lease-ttl"); cfg.LeaseTTL < 3*time.Second {
				return fmt.Errorf("--lease-ttl %v: want at least 3s", cfg.LeaseTTL)
			}
			switch ra := c.Int("readahead"); {
			case ra < 0:
				return fmt.Errorf("--readahead %d: want a number of chunks, 0 or more", ra)
			case ra == 0:
				cfg.Readahead = -1
			default:
				cfg.Readahead = ra
			}
			sm, err := parseSize(c.String("stream-memory"))
			if err != nil {
				return fmt.Errorf("--stream-memory: %w", err)
			}
			cfg.StreamMemory = sm
			if sm == 0 {
				cfg.StreamMemory = -1
			}
			return nil
		},
	})
}
