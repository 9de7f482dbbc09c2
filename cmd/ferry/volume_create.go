package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func cmdVolumeCreate() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "create a thin-provisioned volume",
		UsageText: "ferry volume create NAME --size SIZE",
		Description: `Creates an empty volume; it takes no space until written. NAME uses
a-z, 0-9, '.' and '-'. SIZE is bytes or a number with K, M, G, T, P
(powers of 1024), and must be a multiple of 512 bytes.

   ferry volume create vm1 --size 20G
   ferry volume create scratch --size 1.5TiB
   ferry volume create archive --size 10T --store cloud   # data in S3, cached locally
   FERRY_CHAP_SECRET=0123456789ab ferry volume create db --size 100G \
       --chap-user alice --allow-initiator iqn.1993-08.org.debian:01:host1

` + accessHelp,
		Flags: append(append(apiFlags(), accessFlags()...),
			&cli.StringFlag{Name: "size", Aliases: []string{"s"}, Usage: "volume size, e.g. 10G"},
			&cli.StringFlag{Name: "store", Usage: "keep the volume's data in this S3 store (ferry store ls), cached locally"},
			&cli.StringFlag{Name: "chunk-size", Usage: "S3 chunk size, a power of two from 64K to 64M (default 4M)"},
			jsonFlag(),
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			size, err := sizeArg(c)
			if err != nil {
				return err
			}
			req := wire.CreateRequest{Name: name, Size: size, Access: accessUpdate(c), Store: c.String("store")}
			if cs := c.String("chunk-size"); cs != "" {
				if req.ChunkSize, err = parseSize(cs); err != nil {
					return usagef(c, "--chunk-size: %w", err)
				}
			}
			in, err := apiClient(c).Create(c.Context, req)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(in)
			}
			fmt.Printf("created volume %s (%s)\n", in.Name, formatSize(in.Size))
			printAttach(in)
			return nil
		},
	}
}
