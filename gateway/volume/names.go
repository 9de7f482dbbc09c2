package volume

import (
	"fmt"
	"regexp"
)

// nameRE: volume names are also iSCSI target name suffixes and NBD export
// names, so they keep to characters valid in an IQN.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// ValidateName reports whether name may name a volume.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("volume name %q: use 1-63 characters from a-z, 0-9, '.', '-', starting with a letter or digit: %w", name, ErrInvalid)
	}
	return nil
}

// ValidateSize reports whether size is a usable volume size.
func ValidateSize(size int64) error {
	switch {
	case size <= 0:
		return fmt.Errorf("volume size %d: must be greater than zero: %w", size, ErrInvalid)
	case size%512 != 0:
		return fmt.Errorf("volume size %d: must be a multiple of 512 bytes: %w", size, ErrInvalid)
	case size > MaxSize:
		return fmt.Errorf("volume size %d: larger than the maximum, %d bytes (8 EiB less 512 bytes): %w", size, int64(MaxSize), ErrInvalid)
	}
	return nil
}

// MaxSize is the largest volume size: 8 EiB less one 512-byte sector
// (2^63 - 512), the largest multiple of 512 an int64 offset can address.
const MaxSize = 1<<63 - 512

// snapshotNameRE: snapshot names, the part after '@' in an export name
// and after the last ':' of a snapshot's iSCSI target.
var snapshotNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
