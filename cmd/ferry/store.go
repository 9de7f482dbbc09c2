package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func cmdStore() *cli.Command {
	return &cli.Command{
		Name:  "store",
		Usage: "manage the S3 stores volumes can live in",
		Subcommands: []*cli.Command{
			cmdStoreAdd(),
			cmdStoreLs(),
			cmdStoreInfo(),
			cmdStoreRm(),
			cmdStoreVolumes(),
		},
	}
}

func cmdStoreAdd() *cli.Command {
	return &cli.Command{
		Name:      "add",
		Usage:     "register an S3 bucket after checking access",
		UsageText: "ferry store add NAME --endpoint URL --bucket BUCKET [--prefix P] [--region R]",
		Description: `The gateway checks that it can reach the endpoint, that the bucket
exists and that the credentials may write, read, list and delete there,
and says which of these failed. Credentials come from --access-key and
--secret-key, else AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, else
the [default] profile of --credentials-file (AWS format, default
~/.aws/credentials). The gateway keeps them in DATA/stores.json (mode
0600) and never shows or logs them.

   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
     ferry store add cloud --endpoint https://s3.eu-west-1.amazonaws.com --bucket my-volumes --region eu-west-1
   ferry store add onprem --endpoint http://10.0.0.5:9000 --bucket ferry --prefix site-a/`,
		Flags: append(apiFlags(),
			&cli.StringFlag{Name: "endpoint", Usage: "S3 endpoint URL (http:// or https://)"},
			&cli.StringFlag{Name: "bucket", Usage: "bucket name"},
			&cli.StringFlag{Name: "prefix", Usage: "key prefix inside the bucket"},
			&cli.StringFlag{Name: "region", Usage: "S3 region"},
			&cli.StringFlag{Name: "access-key", Usage: "access key ID (default $AWS_ACCESS_KEY_ID)"},
			&cli.StringFlag{Name: "secret-key", Usage: "secret access key (default $AWS_SECRET_ACCESS_KEY)"},
			&cli.StringFlag{Name: "credentials-file", Usage: "AWS credentials file to read the [default] profile from"},
			jsonFlag(),
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			if err := requireFlag(c, "endpoint", "--endpoint https://s3.eu-west-1.amazonaws.com"); err != nil {
				return err
			}
			if err := requireFlag(c, "bucket", "--bucket my-volumes"); err != nil {
				return err
			}
			ak, sk, err := s3Credentials(c)
			if err != nil {
				return err
			}
			v, err := apiClient(c).AddStore(c.Context, wire.StoreConfig{Name: name, Endpoint: c.String("endpoint"),
				Bucket: c.String("bucket"), Prefix: c.String("prefix"), Region: c.String("region"), AccessKey: ak, SecretKey: sk})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(v)
			}
			fmt.Printf("added store %s (%s, bucket %s)\n", v.Name, v.Endpoint, v.Bucket)
			if !v.Movable {
				fmt.Println("note: the server ignores conditional puts (If-Match), so volumes in this store have no writer lease and cannot move between gateways")
			}
			return nil
		},
	}
}

func cmdStoreLs() *cli.Command {
	return &cli.Command{
		Name:  "ls",
		Usage: "list stores",
		Flags: append(apiFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			ss, err := apiClient(c).Stores(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(ss)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tENDPOINT\tBUCKET\tPREFIX\tVOLUMES")
			for _, s := range ss {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", s.Name, s.Endpoint, s.Bucket, s.Prefix, s.Volumes)
			}
			return w.Flush()
		},
	}
}

func cmdStoreInfo() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "show a store and the objects Ferry keeps in it",
		UsageText: "ferry store info NAME [--json]",
		Flags:     append(apiFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			s, err := apiClient(c).Store(c.Context, name)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(s)
			}
			fmt.Printf("name:      %s\nendpoint:  %s\nbucket:    %s\nprefix:    %s\nvolumes:   %d\nobjects:   %d\nstored:    %s\n",
				s.Name, s.Endpoint, s.Bucket, s.Prefix, s.Volumes, s.Objects, formatSize(s.Bytes))
			if s.Error != "" {
				fmt.Printf("error:     %s\n", s.Error)
			}
			return nil
		},
	}
}

func cmdStoreRm() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "forget a store no volume uses (its objects stay in the bucket)",
		UsageText: "ferry store rm NAME",
		Flags:     apiFlags(),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			if err := apiClient(c).RemoveStore(c.Context, name); err != nil {
				return err
			}
			fmt.Printf("removed store %s\n", name)
			return nil
		},
	}
}
