package docker

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferry-io/ferry/internal/atomicfile"
)

// stateVersion is the state file's format version.
const stateVersion = 1

// stateFile is STATE_DIR/state.json: the plugin's memory across restarts.
// It is replaced atomically (temporary file, fsync, rename, fsync of the
// directory), so a crash leaves the old or the new state, never a mix.
//
//	{"version": 1, "host_id": "docker-1", "boot_id": "…",
//	 "volumes": {"Data_1": {"gateway": "d-data-1-3f2a…", "fstype": "ext4",
//	   "mounts": {"MOUNT-ID": 2}, "attachment": {…}}}}
type stateFile struct {
	Version int    `json:"version"`
	HostID  string `json:"host_id"`
	// BootID is the kernel's boot id when the state was written: after a
	// reboot nothing is mounted or attached, whatever the counts say.
	BootID  string                  `json:"boot_id"`
	Volumes map[string]*volumeState `json:"volumes"`
}

func loadState(path string) (*stateFile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &stateFile{Version: stateVersion, Volumes: map[string]*volumeState{}}, nil
	}
	if err != nil {
		return nil, err
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s is damaged (%v): move it away to start afresh, after unmounting what %s holds", path, err, filepath.Dir(path))
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("state file %s has version %d; this plugin reads version %d", path, st.Version, stateVersion)
	}
	if st.Volumes == nil {
		st.Volumes = map[string]*volumeState{}
	}
	for name, v := range st.Volumes {
		if v == nil {
			delete(st.Volumes, name)
			continue
		}
		if v.Mounts == nil {
			v.Mounts = map[string]int{}
		}
	}
	return &st, nil
}

// save writes the state atomically and durably.
func (st *stateFile) save(path string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(b, '\n')); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}
