package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
)

// s3Credentials finds S3 credentials: flags, then the standard AWS
// environment variables, then the [default] profile of a credentials file.
func s3Credentials(c *cli.Context) (access, secret string, err error) {
	access, secret = c.String("access-key"), c.String("secret-key")
	if access == "" {
		access = os.Getenv("AWS_ACCESS_KEY_ID")
	}
	if secret == "" {
		secret = os.Getenv("AWS_SECRET_ACCESS_KEY")
	}
	if access != "" && secret != "" {
		return access, secret, nil
	}
	path := c.String("credentials-file")
	if path == "" {
		path = os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	}
	if path == "" {
		if home, herr := os.UserHomeDir(); herr == nil {
			path = filepath.Join(home, ".aws", "credentials")
		}
	}
	fa, fs, ferr := readAWSCredentials(path, "default")
	if access == "" {
		access = fa
	}
	if secret == "" {
		secret = fs
	}
	if access == "" || secret == "" {
		msg := "no S3 credentials: give --access-key/--secret-key, set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a credentials file"
		if ferr != nil && !errors.Is(ferr, os.ErrNotExist) {
			msg += " (" + ferr.Error() + ")"
		}
		return "", "", errors.New(msg)
	}
	return access, secret, nil
}

// readAWSCredentials reads one profile of an AWS shared credentials file.
func readAWSCredentials(path, profile string) (access, secret string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			in = strings.TrimSpace(line[1:len(line)-1]) == profile
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !in || !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "aws_access_key_id":
			access = strings.TrimSpace(v)
		case "aws_secret_access_key":
			secret = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return "", "", fmt.Errorf("%s: %w", path, err)
	}
	return access, secret, nil
}
