package volume

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/ferry-io/ferry/internal/size"
)

// tooLarge turns the EFBIG a local volume file's truncate fails with into
// an error that states the pool's limit and what to do instead.
func tooLarge(err error, dir string, want int64) error {
	if !errors.Is(err, syscall.EFBIG) {
		return err
	}
	limit, perr := maxFileSize(dir)
	if perr != nil {
		return fmt.Errorf("volume size %s is larger than the local pool's file system allows in %s: %w", size.Format(want), dir, ErrInvalid)
	}
	return fmt.Errorf("volume size %s is larger than the largest file the local pool's file system allows in %s, %s: "+
		"use a size up to %s, put the pool on a file system with larger files (XFS: 8 EiB), or keep the volume in S3 with --store: %w",
		size.Format(want), dir, size.Format(limit), size.Format(limit), ErrInvalid)
}

// maxFileSize finds the largest file, in whole 512-byte sectors, that
// dir's file system allows: it grows a scratch file with ftruncate, which
// allocates nothing, and bisects between what works and what fails.
func maxFileSize(dir string) (int64, error) {
	f, err := os.CreateTemp(dir, ".size-probe-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	lo, hi := int64(0), int64(MaxSize)/512 // in sectors: lo fits, hi+1 does not
	if f.Truncate(hi*512) == nil {
		return hi * 512, nil
	}
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		err := f.Truncate(mid * 512)
		switch {
		case err == nil:
			lo = mid
		case errors.Is(err, syscall.EFBIG) || errors.Is(err, syscall.EINVAL):
			hi = mid - 1
		default:
			return 0, err
		}
	}
	return lo * 512, nil
}
