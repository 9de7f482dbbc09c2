package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func cmdPool() *cli.Command {
	return &cli.Command{
		Name:  "pool",
		Usage: "show pooled capacity",
		Subcommands: []*cli.Command{{
			Name:      "info",
			Usage:     "show the local pool's capacity and what volumes use",
			UsageText: "ferry pool info [--json]",
			Flags:     append(apiFlags(), jsonFlag()),
			Action: func(c *cli.Context) error {
				p, err := apiClient(c).Pool(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(p)
				}
				fmt.Printf("volumes:      %d\n", p.Volumes)
				fmt.Printf("provisioned:  %s\n", formatSize(p.Provisioned))
				fmt.Printf("allocated:    %s\n", formatSize(p.Allocated))
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "\nLOCAL DIR\tSIZE\tFREE\tFS\tSNAPSHOTS")
				for _, d := range p.Dirs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", d.Path, formatSize(d.Total), formatSize(d.Free), d.FS, poolSnapshots(d))
				}
				if err := w.Flush(); err != nil {
					return err
				}
				return printTierPool(c)
			},
		}},
	}
}

// poolSnapshots says whether local volumes in pool directory d can have
// snapshots and clones.
func poolSnapshots(d wire.PoolDir) string {
	if d.Reflink {
		return "yes (reflink)"
	}
	return "no (" + d.FS + " cannot share blocks: use XFS or btrfs)"
}

// printTierPool shows the S3 side of the pool: the cache of S3-backed
// volumes and each store's use, as `pool info --json` has them.
func printTierPool(c *cli.Context) error {
	cl := apiClient(c)
	vols, err := cl.Volumes(c.Context)
	if err != nil {
		return err
	}
	tiered := 0
	for _, v := range vols {
		if v.Tier != nil {
			tiered++
		}
	}
	p, err := cl.Pool(c.Context)
	if err != nil {
		return err
	}
	fmt.Printf("\ncache:        %s of %s used by %d S3-backed volume(s), %s dirty\n",
		formatSize(p.Cache.Used), formatSize(p.Cache.Budget), tiered, formatSize(p.Cache.Dirty))
	stores, err := cl.Stores(c.Context)
	if err != nil {
		return err
	}
	if len(stores) == 0 {
		fmt.Println("stores:       none (ferry store add NAME --endpoint URL --bucket B)")
		return nil
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "\nSTORE\tBUCKET\tVOLUMES\tOBJECTS\tSTORED")
	for _, s := range stores {
		info, err := cl.Store(c.Context, s.Name)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\n", s.Name, s.Bucket, s.Volumes, info.Objects, formatSize(info.Bytes))
	}
	return w.Flush()
}
