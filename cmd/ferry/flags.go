package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api"
)

// apiFlags are the flags of every command that talks to a running gateway.
func apiFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    "api",
			Usage:   "address of the gateway's admin API",
			Value:   "127.0.0.1:9809",
			EnvVars: []string{"FERRY_API"},
		},
	}
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"}
}

func apiClient(c *cli.Context) *api.Client {
	return api.NewClient(c.String("api"))
}

// parseSize parses a byte size: a plain number of bytes, or a number with a
// binary unit K, M, G, T, P (also written KiB/KB, MiB/MB ...; all are
// powers of 1024, as in qemu-img). Fractions are allowed when the result is
// a whole number of bytes ("1.5G").
func parseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("size is empty: give bytes or a number with K, M, G, T or P (e.g. 10G)")
	}
	upper := strings.ToUpper(s)
	upper = strings.TrimSuffix(upper, "B")
	upper = strings.TrimSuffix(upper, "I")
	mult := int64(1)
	if n := len(upper); n > 0 {
		switch upper[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult != 1 {
			upper = upper[:n-1]
		}
	}
	if mult == 1 && upper != strings.ToUpper(s) && !strings.EqualFold(s, upper+"B") {
		return 0, fmt.Errorf("size %q: unknown unit (use K, M, G, T or P, e.g. 512M, 10G, 10GiB)", orig)
	}
	if n, err := strconv.ParseInt(upper, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("size %q is negative", orig)
		}
		if n > (1<<63-1)/mult {
			return 0, fmt.Errorf("size %q is too large", orig)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(upper, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: not a size (examples: 512M, 10G, 10GiB, 1T, 1048576)", orig)
	}
	v := f * float64(mult)
	if v >= 1<<63 {
		return 0, fmt.Errorf("size %q is too large", orig)
	}
	if v != float64(int64(v)) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", orig)
	}
	return int64(v), nil
}

// formatSize prints bytes with a binary unit, exact when possible.
func formatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d %s", int64(f), units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// sizeArg reads the required --size flag.
func sizeArg(c *cli.Context) (int64, error) {
	if !c.IsSet("size") {
		return 0, fmt.Errorf("--size is required (e.g. --size 10G)")
	}
	return parseSize(c.String("size"))
}

// nameArg reads the one positional volume name.
func nameArg(c *cli.Context) (string, error) {
	switch c.NArg() {
	case 1:
		return c.Args().First(), nil
	case 0:
		return "", fmt.Errorf("missing volume name (usage: %s)", c.Command.UsageText)
	default:
		return "", fmt.Errorf("expected one volume name, got %d arguments (usage: %s)", c.NArg(), c.Command.UsageText)
	}
}

// completionFlag is the hidden flag urfave/cli answers with the words that
// may follow the command line before it (EnableBashCompletion). It must be
// the last argument.
const completionFlag = "--generate-bash-completion"

// interspersed moves the flags that follow positional arguments in front of
// them, so `ferry volume create vm1 --size 20G` works: urfave/cli v2 stops
// parsing flags at the first positional argument. Everything after "--"
// stays positional. The shell-completion flag stays last, where urfave/cli
// looks for it.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	if n := len(args) - 1; args[n] == completionFlag {
		return append(interspersed(app, args[:n:n]), completionFlag)
	}
	i := 1
	cmds := app.Commands
	var leaf *cli.Command
	for i < len(args) {
		var next *cli.Command
		for _, c := range cmds {
			if c.HasName(args[i]) {
				next = c
				break
			}
		}
		if next == nil {
			break
		}
		leaf, cmds = next, next.Subcommands
		i++
	}
	if leaf == nil {
		return args
	}
	takesValue := func(tok string) bool {
		name := strings.TrimLeft(tok, "-")
		if strings.Contains(name, "=") {
			return false
		}
		for _, f := range leaf.Flags {
			for _, n := range f.Names() {
				if n == name {
					if d, ok := f.(cli.DocGenerationFlag); ok {
						return d.TakesValue()
					}
					return true
				}
			}
		}
		return false
	}
	out := append([]string{}, args[:i]...)
	var pos []string
	for j := i; j < len(args); j++ {
		t := args[j]
		switch {
		case t == "--":
			pos = append(pos, args[j:]...)
			j = len(args)
		case len(t) > 1 && t[0] == '-':
			out = append(out, t)
			if takesValue(t) && j+1 < len(args) {
				j++
				out = append(out, args[j])
			}
		default:
			pos = append(pos, t)
		}
	}
	return append(out, pos...)
}
