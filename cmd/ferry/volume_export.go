package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/backends/s3"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/tier"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/progress"
)

func cmdVolumeExport() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "rebuild an S3-backed volume's image from its latest recovery point in S3",
		UsageText: "ferry volume export NAME --from-s3 --to FILE [--progress=false]",
		Description: `Reads only objects in S3 (docs/FORMAT.md): the newest manifest and the
chunks it names. The gateway is asked only where the volume's objects
are; the data comes straight from S3 with your credentials (flags,
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a credentials file). FILE
is created (sparse) and must not exist. Progress is shown on stderr when
it is a terminal.

A local volume (not in an S3 store) is copied from its NBD URL instead:

   nbdcopy nbd://127.0.0.1:10809/vm1 vm1.img
   qemu-img convert -O raw nbd://127.0.0.1:10809/vm1 vm1.img`,
		Flags: append(apiFlags(),
			&cli.BoolFlag{Name: "from-s3", Usage: "read the image from S3 (the only source supported)"},
			&cli.StringFlag{Name: "to", Usage: "image file to create"},
			&cli.StringFlag{Name: "access-key", Usage: "access key ID (default $AWS_ACCESS_KEY_ID)"},
			&cli.StringFlag{Name: "secret-key", Usage: "secret access key (default $AWS_SECRET_ACCESS_KEY)"},
			&cli.StringFlag{Name: "credentials-file", Usage: "AWS credentials file"},
			&cli.BoolFlag{Name: "progress", Usage: "show progress on stderr when it is a terminal", Value: true},
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			if err := requireFlag(c, "from-s3", "--from-s3"); err != nil {
				return err
			}
			if err := requireFlag(c, "to", "--to vm1.img"); err != nil {
				return err
			}
			loc, err := apiClient(c).Location(c.Context, name)
			if err != nil {
				return localVolumeHint(c, name, err)
			}
			ak, sk, err := s3Credentials(c)
			if err != nil {
				return err
			}
			open := func(prefix string) (store.Store, error) {
				return s3.New(s3.Config{Endpoint: loc.Store.Endpoint, Bucket: loc.Store.Bucket, Prefix: prefix,
					Region: loc.Store.Region, AccessKey: ak, SecretKey: sk})
			}
			st, err := open(loc.Prefix)
			if err != nil {
				return err
			}
			m, err := tier.LatestManifest(c.Context, st)
			if err != nil {
				return fmt.Errorf("no recovery point of %s in S3 yet (run ferry volume checkpoint %s): %w", name, name, err)
			}
			// A paged map (format 4) is read whole first: the progress
			// needs its size.
			whole, err := tier.Materialize(c.Context, st, m)
			if err != nil {
				return fmt.Errorf("read the map of recovery point %d: %w", m.Sequence, err)
			}
			m = whole
			// A clone reads its ancestors' objects from their prefixes.
			var layers []tier.Layer
			for _, p := range m.Parents {
				ps, err := open(loc.Store.Prefix + p.Prefix)
				if err != nil {
					return err
				}
				layers = append(layers, tier.Layer{Store: ps, Below: p.Below})
			}
			st = tier.Layered(st, layers)
			f, err := os.OpenFile(c.String("to"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			total := manifestBytes(m)
			p := progress.ForTerminal(os.Stderr, "export "+name, total, c.Bool("progress"))
			err = f.Truncate(m.Size)
			if err == nil {
				err = tier.Export(c.Context, st, m, countingWriterAt{f, p})
			}
			if err == nil {
				// A chunk's object may be shorter than the chunk: Export
				// leaves its zero tail to the file's hole.
				p.Set(total)
			}
			p.Done()
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(c.String("to"))
				return errors.Join(fmt.Errorf("export %s", name), err)
			}
			fmt.Printf("exported %s recovery point %d (%s, %d chunks) to %s\n", name, m.Sequence, formatSize(m.Size), len(m.Chunks), c.String("to"))
			return nil
		},
	}
}

// localVolumeHint turns the gateway's refusal to locate a volume that is
// in no S3 store into directions to copy it over NBD. Other errors, and a
// refusal for any other reason, are returned as they are.
func localVolumeHint(c *cli.Context, name string, err error) error {
	if !errors.Is(err, wire.ErrInvalid) {
		return err
	}
	in, ierr := apiClient(c).Volume(c.Context, name)
	if ierr != nil || in.Tier != nil {
		return err
	}
	if in.Attach.NBD == nil {
		return fmt.Errorf("volume %s is local (not in an S3 store), so there is no S3 copy to export; the gateway serves no NBD to copy it from", name)
	}
	u, to := in.Attach.NBD.URL, shellQuote(c.String("to"))
	return fmt.Errorf("volume %s is local (not in an S3 store), so there is no S3 copy to export; copy it from its NBD URL:\n"+
		"  nbdcopy %s %s   or   qemu-img convert -O raw %s %s", name, u, to, u, to)
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:+,@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// manifestBytes is how many bytes of the image Export writes: the
// chunks the manifest names (stored or overlaid), the last one clipped at
// the volume's size. The rest of the image is a hole.
func manifestBytes(m tier.Manifest) int64 {
	seen := map[int64]bool{}
	var n int64
	add := func(key string) {
		idx, err := strconv.ParseInt(key, 10, 64)
		if err != nil || idx < 0 || m.ChunkSize <= 0 || idx*m.ChunkSize >= m.Size || seen[idx] {
			return // Export rejects a bad index
		}
		seen[idx] = true
		n += min(m.ChunkSize, m.Size-idx*m.ChunkSize)
	}
	for k := range m.Chunks {
		add(k)
	}
	for k := range m.Overlays {
		add(k)
	}
	return n
}

// countingWriterAt reports every byte written to a progress display.
type countingWriterAt struct {
	w io.WriterAt
	p *progress.Printer
}

func (c countingWriterAt) WriteAt(b []byte, off int64) (int, error) {
	n, err := c.w.WriteAt(b, off)
	c.p.Add(int64(n))
	return n, err
}
