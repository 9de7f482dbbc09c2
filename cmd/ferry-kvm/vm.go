package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/kvm/client"
)

func apiFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "api", Usage: "the ferry-kvm daemon's `ADDR`", Value: "127.0.0.1:9810", EnvVars: []string{"FERRY_KVM_API"}},
		&cli.StringFlag{Name: "token-file", Usage: "`FILE` holding the daemon's API token (its STATE/api-token, or a copy)", EnvVars: []string{"FERRY_KVM_TOKEN_FILE"},
			Action: func(c *cli.Context, _ string) error { _, err := apiToken(c); return err }},
		&cli.StringFlag{Name: "api-ca", Usage: "PEM certificate authority `FILE` for an https:// --api (default: the system's)", EnvVars: []string{"FERRY_KVM_API_CA"},
			Action: func(c *cli.Context, f string) error {
				if f == "" {
					return nil
				}
				if _, err := apiauth.CAConfig(f); err != nil {
					return fmt.Errorf("--api-ca: %w", err)
				}
				return nil
			}},
		&cli.StringFlag{Name: "token", Usage: "the daemon's API token (prefer --token-file or FERRY_KVM_TOKEN: a flag shows in ps)", EnvVars: []string{"FERRY_KVM_TOKEN"},
			Action: func(c *cli.Context, _ string) error { _, err := apiToken(c); return err }},
	}
}

// apiToken reads the token flags: "" when none is given. The flags'
// actions call it first, so a bad token is reported before any request.
func apiToken(c *cli.Context) (string, error) {
	return apiauth.ClientToken(c.String("token"), c.String("token-file"), "--token")
}

func apiClient(c *cli.Context) *client.Client {
	var opts []client.Option
	if t, _ := apiToken(c); t != "" { // checked by the flags' actions
		opts = append(opts, client.WithToken(t))
	}
	if f := c.String("api-ca"); f != "" {
		cfg, _ := apiauth.CAConfig(f) // checked by the flag's action
		opts = append(opts, client.WithTLS(cfg))
	}
	return client.New(c.String("api"), opts...)
}

func cmdVM() *cli.Command {
	return &cli.Command{
		Name:  "vm",
		Usage: "manage VMs on a ferry-kvm daemon",
		Flags: apiFlags(),
		Subcommands: []*cli.Command{
			cmdVMCreate(), cmdVMLs(), cmdVMInfo(), cmdVMStart(), cmdVMStop(), cmdVMRm(),
			cmdVMConsole(), cmdVMLog(), cmdVMMigrate(),
		},
	}
}
