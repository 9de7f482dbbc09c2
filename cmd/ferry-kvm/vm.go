package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/kvm/client"
)

// apiFlags are the daemon's flags. The vm group's read the environment
// too (env); its subcommands' only the command line, so that given() can
// tell a flag given after the subcommand from the environment.
func apiFlags(env bool) []cli.Flag {
	// The subcommands' help names the variable the group reads.
	vars := func(v string) []string {
		if env {
			return []string{v}
		}
		return nil
	}
	usage := func(u, v string) string {
		if env {
			return u
		}
		return u + " (or $" + v + ")"
	}
	return []cli.Flag{
		&cli.StringFlag{Name: "api", Usage: usage("the ferry-kvm daemon's `ADDR`", "FERRY_KVM_API"), Value: "127.0.0.1:9810", EnvVars: vars("FERRY_KVM_API")},
		&cli.StringFlag{Name: "token-file", Usage: usage("`FILE` holding the daemon's API token (its STATE/api-token, or a copy)", "FERRY_KVM_TOKEN_FILE"), EnvVars: vars("FERRY_KVM_TOKEN_FILE"),
			Action: func(c *cli.Context, _ string) error { _, err := apiToken(c); return err }},
		&cli.StringFlag{Name: "api-ca", Usage: usage("PEM certificate authority `FILE` for an https:// --api (default: the system's)", "FERRY_KVM_API_CA"), EnvVars: vars("FERRY_KVM_API_CA"),
			Action: func(c *cli.Context, f string) error {
				if f == "" {
					return nil
				}
				if _, err := apiauth.CAConfig(f); err != nil {
					return fmt.Errorf("--api-ca: %w", err)
				}
				return nil
			}},
		&cli.StringFlag{Name: "token", Usage: "the daemon's API token (prefer --token-file or FERRY_KVM_TOKEN: a flag shows in ps)", EnvVars: vars("FERRY_KVM_TOKEN"),
			Action: func(c *cli.Context, _ string) error { _, err := apiToken(c); return err }},
	}
}

// apiToken reads the token flags: "" when none is given. The flags'
// actions call it first, so a bad token is reported before any request.
func apiToken(c *cli.Context) (string, error) {
	return apiauth.ClientToken(given(c, "token"), given(c, "token-file"), "--token")
}

func apiClient(c *cli.Context) *client.Client {
	var opts []client.Option
	if t, _ := apiToken(c); t != "" { // checked by the flags' actions
		opts = append(opts, client.WithToken(t))
	}
	if f := given(c, "api-ca"); f != "" {
		cfg, _ := apiauth.CAConfig(f) // checked by the flag's action
		opts = append(opts, client.WithTLS(cfg))
	}
	return client.New(given(c, "api"), opts...)
}

// cmdVM is the vm command group. The daemon's flags (--api, the token,
// --api-ca) are taken before the subcommand and after it alike
// ("ferry-kvm vm --api H:P info web", "ferry-kvm vm info web --api H:P"),
// as ferry's own commands take theirs.
func cmdVM() *cli.Command {
	subs := []*cli.Command{
		cmdVMCreate(), cmdVMLs(), cmdVMInfo(), cmdVMStart(), cmdVMStop(), cmdVMRm(),
		cmdVMConsole(), cmdVMLog(), cmdVMMigrate(),
	}
	for _, sc := range subs {
		sc.Flags = append(sc.Flags, apiFlags(false)...)
	}
	return &cli.Command{
		Name:        "vm",
		Usage:       "manage VMs on a ferry-kvm daemon",
		Flags:       apiFlags(true),
		Subcommands: subs,
	}
}

// given is the value of the daemon flag name: given after the subcommand,
// else given before it (the vm group) or in the environment, else its
// default. (urfave/cli reads a flag from the innermost command that
// defines it, set there or not.)
func given(c *cli.Context, name string) string {
	for _, x := range c.Lineage() {
		if x.Command != nil && x.IsSet(name) {
			return x.String(name)
		}
	}
	return c.String(name)
}
