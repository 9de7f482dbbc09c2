// Package cliconf is what Ferry's long-running commands (ferry serve,
// ferry docker-plugin, ferry-kvm serve) share on their command line: flags
// read from a YAML config file that is checked for typos, and a log/slog
// logger chosen by --log-level and --log-format.
package cliconf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"gopkg.in/yaml.v3"
)

// ConfigFile is the Before of a command whose flags (altsrc-wrapped) may
// come from the YAML file named by its --config flag: the file is checked
// (CheckFile), then read. Flags and the environment win over the file.
func ConfigFile(flags []cli.Flag) cli.BeforeFunc {
	return func(c *cli.Context) error {
		if c.String("config") == "" {
			return nil
		}
		if err := CheckFile(c.String("config"), flags, c.App.Name+" "+c.Command.Name); err != nil {
			return err
		}
		return altsrc.InitInputSourceWithContext(flags, altsrc.NewYamlSourceFromFlagFunc("config"))(c)
	}
}

// CheckFile refuses a config file that is missing, is not a YAML mapping,
// or has a key that names none of flags (a typo would otherwise be
// ignored silently). command names the command in the message
// ("ferry serve").
func CheckFile(path string, flags []cli.Flag, command string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("config file %s does not exist", path)
	}
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var keys map[string]any
	if err := yaml.Unmarshal(b, &keys); err != nil {
		return fmt.Errorf("config file %s is not a YAML mapping of flag names to values: %w", path, err)
	}
	known := map[string]bool{}
	for _, f := range flags {
		for _, n := range f.Names() {
			known[n] = n != "config"
		}
	}
	var unknown []string
	for k := range keys {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	k := unknown[0]
	msg := fmt.Sprintf("config file %s: unknown key %q", path, k)
	if alt := strings.ReplaceAll(k, "_", "-"); known[alt] {
		msg += fmt.Sprintf(" (did you mean %q?)", alt)
	}
	if len(unknown) > 1 {
		msg += fmt.Sprintf(", and %d more: %s", len(unknown)-1, strings.Join(unknown[1:], ", "))
	}
	return fmt.Errorf("%s; keys are the names of %s's flags (%s --help)", msg, command, command)
}

// NewLogger returns a logger on standard error: level debug, info, warn
// or error; format text (key=value lines) or json.
func NewLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}
