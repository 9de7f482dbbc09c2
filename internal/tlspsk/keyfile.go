package tlspsk

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
)

// MinKeyLen is the shortest key ReadKeys accepts: the binder lets anyone
// who sees a handshake test guesses offline, so a key must not be
// guessable (psktool makes 32 bytes by default).
const MinKeyLen = 16

// Keys are pre-shared keys by identity.
type Keys map[string][]byte

// Lookup is a Config.Key.
func (k Keys) Lookup(identity string) ([]byte, bool) {
	key, ok := k[identity]
	return key, ok
}

// ReadKeyFile reads a PSK file in GnuTLS's psktool format, the file
// nbdkit --tls-psk and QEMU's tls-creds-psk (dir/keys.psk) read: one
// "identity:hexkey" per line. Blank lines and lines starting with '#'
// are skipped. The file must not be accessible to others (mode o-rwx);
// errors never contain key material.
func ReadKeyFile(path string) (Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("%s is accessible to every user (mode %04o): its keys are secrets; chmod o-rwx %s", path, fi.Mode().Perm(), path)
	}
	keys, err := ParseKeys(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// ParseKeys parses psktool's "identity:hexkey" lines.
func ParseKeys(r io.Reader) (Keys, error) {
	keys := Keys{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.IndexByte(line, ':')
		if i <= 0 {
			return nil, fmt.Errorf("line %d: want identity:hexkey", n)
		}
		id := line[:i]
		key, err := hex.DecodeString(strings.TrimSpace(line[i+1:]))
		if err != nil {
			return nil, fmt.Errorf("line %d (identity %q): the key is not hexadecimal", n, id)
		}
		if len(key) < MinKeyLen {
			return nil, fmt.Errorf("line %d (identity %q): key of %d bytes, want at least %d (psktool -s 32 makes one)", n, id, len(key), MinKeyLen)
		}
		if _, dup := keys[id]; dup {
			return nil, fmt.Errorf("line %d: identity %q appears twice", n, id)
		}
		keys[id] = key
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no keys (want identity:hexkey lines, as psktool writes)")
	}
	return keys, nil
}
