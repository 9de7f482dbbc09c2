package docker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// LockStateDir takes an exclusive lock on DIR/lock, so two plugins never
// share a state directory. The kernel drops it when the process dies; the
// FUSE helpers do not inherit it (close-on-exec), so a restarted plugin
// gets it while they keep serving.
func LockStateDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another ferry docker-plugin uses the state directory %s", dir)
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}
