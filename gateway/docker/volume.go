package docker

import (
	"sort"
	"time"
)

// volumeState is one Docker volume as the plugin remembers it: its
// gateway volume, how to format and mount it, and who uses it. Mounts
// counts Mount calls per Mount ID (a count, not a set: Docker reuses an
// ID, e.g. for `docker cp` beside a running container); the volume is
// attached while any count is positive.
type volumeState struct {
	Gateway  string `json:"gateway"`
	FSType   string `json:"fstype"`
	ReadOnly bool   `json:"readonly,omitempty"`
	// Adopted marks a gateway volume that existed before the Docker
	// volume (made with `ferry volume create`): `docker volume rm` only
	// forgets it, and never deletes its data.
	Adopted bool      `json:"adopted,omitempty"`
	Created time.Time `json:"created"`
	// Mounts counts Mount calls per Mount ID.
	Mounts map[string]int `json:"mounts"`
	// Attachment is set while the volume is attached on this host.
	Attachment *Attachment `json:"attachment,omitempty"`
	// Broken says why the attached volume no longer works (its data path
	// died); it is cleaned up when the last container lets go.
	Broken string `json:"broken,omitempty"`
}

// refs is the number of outstanding Mount calls.
func (v *volumeState) refs() int {
	n := 0
	for _, c := range v.Mounts {
		n += c
	}
	return n
}

func (v *volumeState) addRef(id string) { v.Mounts[id]++ }

// dropRef undoes one Mount by id; it reports false for an id with no
// outstanding Mount.
func (v *volumeState) dropRef(id string) bool {
	if v.Mounts[id] == 0 {
		return false
	}
	v.Mounts[id]--
	if v.Mounts[id] == 0 {
		delete(v.Mounts, id)
	}
	return true
}

// mountIDs lists the Mount IDs holding the volume, for messages.
func (v *volumeState) mountIDs() []string {
	ids := make([]string, 0, len(v.Mounts))
	for id := range v.Mounts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
