package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ferry-io/ferry/backends/tier"
	"github.com/ferry-io/ferry/internal/atomicfile"
	"github.com/ferry-io/ferry/internal/vfs"
)

// catalogVersion is the on-disk catalog format version
// (docs/ARCHITECTURE.md). Version 2 moved access control from "iscsi" to
// "access", which holds for every protocol; version 1 catalogs are read and
// rewritten as version 2 at the next change. An older Ferry refuses a
// version 2 catalog rather than serve its volumes without their rules.
const catalogVersion = 2

// Record is one volume's persistent metadata.
type Record struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	Backend string `json:"backend"`        // "local" or "tier"
	Path    string `json:"path,omitempty"` // local: the volume file; tier: the cache directory
	// Store and ChunkSize are set for S3-backed ("tier") volumes.
	Store     string `json:"store,omitempty"`
	ChunkSize int64  `json:"chunk_size,omitempty"`
	// Parents, for a clone, are its ancestors in the same store, nearest
	// first (docs/FORMAT.md, "Clones").
	Parents []tier.Parent `json:"parents,omitempty"`
	Created time.Time     `json:"created"`
	// Access is the volume's access control, for every protocol; nil
	// admits any client (and iSCSI logins use the gateway's default CHAP).
	Access *Access `json:"access,omitempty"`
	// Migration is the volume's move to another store while it runs
	// (migrate.go): resumed when the gateway starts.
	Migration *MigrationRecord `json:"migration,omitempty"`
	// LegacyISCSI is where a version 1 catalog kept Access.
	LegacyISCSI *Access `json:"iscsi,omitempty"`
}

// catalogFile is the JSON document stored at <data>/catalog.json.
type catalogFile struct {
	Version int       `json:"version"`
	Volumes []*Record `json:"volumes"`
}

// loadCatalog reads path on fsys; a missing file is an empty catalog.
func loadCatalog(fsys vfs.FS, path string) (*catalogFile, error) {
	b, err := vfs.ReadFile(fsys, path)
	if errors.Is(err, os.ErrNotExist) {
		return &catalogFile{Version: catalogVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read catalog: %w", err)
	}
	var c catalogFile
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("parse catalog %s: %w", path, err)
	}
	switch c.Version {
	case 1:
		for _, r := range c.Volumes {
			r.Access, r.LegacyISCSI = r.LegacyISCSI, nil
		}
		c.Version = catalogVersion
	case catalogVersion:
	default:
		return nil, fmt.Errorf("catalog %s: unsupported version %d (this Ferry reads 1 and %d)", path, c.Version, catalogVersion)
	}
	return &c, nil
}

// saveCatalog replaces path atomically: write a temporary file, fsync it,
// rename it over the old one and fsync the directory. A crash at any point
// leaves either the old or the new catalog, never a torn one
// (catalog_crash_test.go proves it on a crashable file system).
func saveCatalog(fsys vfs.FS, path string, c *catalogFile) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode catalog: %w", err)
	}
	if err := atomicfile.On(fsys).WriteFile(path, append(b, '\n')); err != nil {
		return fmt.Errorf("save catalog: %w", err)
	}
	return nil
}
