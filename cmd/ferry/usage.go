package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// usageError is a mistake in how a command was called: the CLI prints it
// with a pointer to the command's help and exits with status 2, as
// getopt-style tools do, instead of the whole help text.
type usageError struct {
	err error
	// cmd is the full command, "ferry volume create".
	cmd string
}

func (e *usageError) Error() string {
	return fmt.Sprintf("%v\nRun '%s --help' for usage.", e.err, e.cmd)
}

func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usageError for the command c runs.
func usagef(c *cli.Context, format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...), cmd: commandPath(c)}
}

// commandPath is "ferry volume create" for the command c runs.
func commandPath(c *cli.Context) string {
	var names []string
	for _, cc := range c.Lineage() {
		if cc.Command != nil && cc.Command.Name != "" && cc.Command.Name != c.App.Name {
			names = append([]string{cc.Command.Name}, names...)
		}
	}
	return strings.Join(append([]string{c.App.Name}, names...), " ")
}

// strictUsage makes every command answer a bad flag or an unknown
// subcommand with a usageError, and leaves the process's exit to main.
func strictUsage(app *cli.App) {
	app.ExitErrHandler = func(*cli.Context, error) {}
	app.OnUsageError = onUsageError
	app.Action = unknownCommand
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			cmd.OnUsageError = onUsageError
			if len(cmd.Subcommands) > 0 {
				if cmd.Action == nil {
					cmd.Action = unknownCommand
				}
				walk(cmd.Subcommands)
			}
		}
	}
	walk(app.Commands)
}

func onUsageError(c *cli.Context, err error, _ bool) error {
	return &usageError{err: err, cmd: commandPath(c)}
}

// unknownCommand is the action of the app and of every command that only
// groups subcommands: with no argument it shows the help, with one it
// says that no such command exists.
func unknownCommand(c *cli.Context) error {
	if c.NArg() == 0 {
		if c.Command == nil || c.Command.Name == "" {
			return cli.ShowAppHelp(c)
		}
		return cli.ShowSubcommandHelp(c)
	}
	return usagef(c, "unknown command %q", c.Args().First())
}

// requireFlag checks that a required flag was given; example shows how.
func requireFlag(c *cli.Context, name, example string) error {
	if c.IsSet(name) {
		return nil
	}
	return usagef(c, "--%s is required (e.g. %s)", name, example)
}
