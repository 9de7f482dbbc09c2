package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/internal/size"
)

// apiFlags are the flags of every command that talks to a running gateway.
func apiFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{
			Name:    "api",
			Usage:   "address of the gateway's admin API",
			Value:   "127.0.0.1:9809",
			EnvVars: []string{"FERRY_API"},
		},
	}, tokenFlags()...)
}

// tokenFlags are how a client of the admin API authenticates and trusts
// it: the CLI's commands, the Docker plugin and its helpers share them.
func tokenFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    "token-file",
			Usage:   "file holding the gateway's API token (its DATA/api-token, or a copy)",
			EnvVars: []string{"FERRY_TOKEN_FILE"},
			Action:  func(c *cli.Context, _ string) error { _, err := apiOptions(c); return err },
		},
		&cli.StringFlag{
			Name:    "token",
			Usage:   "the gateway's API token (prefer --token-file or FERRY_TOKEN: a flag shows in ps)",
			EnvVars: []string{"FERRY_TOKEN"},
			Action:  func(c *cli.Context, _ string) error { _, err := apiOptions(c); return err },
		},
		&cli.StringFlag{
			Name:    "api-ca",
			Usage:   "PEM certificate authority for an https:// --api (default: the system's)",
			EnvVars: []string{"FERRY_API_CA"},
			Action:  func(c *cli.Context, _ string) error { _, err := apiOptions(c); return err },
		},
	}
}

// apiToken reads the token flags: "" when none is given.
func apiToken(c *cli.Context) (string, error) {
	return apiauth.ClientToken(c.String("token"), c.String("token-file"), "--token")
}

// apiOptions turns the token flags into client options; the flags' actions
// call it first, so a bad token or CA file is reported before any request.
func apiOptions(c *cli.Context) ([]client.Option, error) {
	var opts []client.Option
	t, err := apiToken(c)
	if err != nil {
		return nil, err
	}
	if t != "" {
		opts = append(opts, client.WithToken(t))
	}
	if ca := c.String("api-ca"); ca != "" {
		cfg, err := apiauth.CAConfig(ca)
		if err != nil {
			return nil, fmt.Errorf("--api-ca: %w", err)
		}
		opts = append(opts, client.WithTLS(cfg))
	}
	return opts, nil
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"}
}

func apiClient(c *cli.Context) *client.Client {
	opts, _ := apiOptions(c) // checked by the flags' actions
	return client.New(c.String("api"), opts...)
}

// The CLI's size syntax and display; see package size.
var (
	parseSize  = size.Parse
	formatSize = size.Format
)

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// sizeArg reads the required --size flag.
func sizeArg(c *cli.Context) (int64, error) {
	if err := requireFlag(c, "size", "--size 10G"); err != nil {
		return 0, err
	}
	n, err := parseSize(c.String("size"))
	if err != nil {
		return 0, usagef(c, "--size: %w", err)
	}
	return n, nil
}

// nameArg reads the one positional name (a volume's, or a store's).
func nameArg(c *cli.Context) (string, error) {
	switch c.NArg() {
	case 1:
		return c.Args().First(), nil
	case 0:
		return "", usagef(c, "missing %s (usage: %s)", argName(c), c.Command.UsageText)
	}
	extra := c.Args().Get(1)
	if hasFlag(c, "size") && !c.IsSet("size") {
		if _, err := parseSize(extra); err == nil {
			return "", usagef(c, "unexpected argument %q: did you mean --size %s?", extra, extra)
		}
	}
	return "", usagef(c, "expected one %s, got %d arguments (usage: %s)", argName(c), c.NArg(), c.Command.UsageText)
}

// argName names the positional argument of c's command in errors.
func argName(c *cli.Context) string {
	for _, p := range c.Lineage() {
		if p.Command != nil && p.Command.Name == "store" {
			return "store name"
		}
	}
	return "volume name"
}

func hasFlag(c *cli.Context, name string) bool {
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
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
