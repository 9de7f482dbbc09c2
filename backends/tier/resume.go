package tier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/ferry-io/ferry/backends/lease"
	"github.com/ferry-io/ferry/backends/store"
)

// resume starts a cache that has no meta.json from what the store holds
// (docs/FORMAT.md, "A cache started over an existing volume"):
//
//   - under a writer lease of a new generation (an adoption), the versions
//     start at the generation (Open), so only the newest recovery point is
//     read: a manifest listing and one get, whatever the volume's size;
//
//   - the object map is the newest valid manifest's, so the volume reads as
//     of that recovery point and garbage collection keeps what it names;
//
//   - the version sequence continues above every chunk and log version in
//     the store, and the manifest sequence above the newest manifest, so
//     nothing this cache uploads can reuse an existing key.
//
// A store holding nothing is a new volume, which needs cfg.Size. meta.json
// and the journal are written, durably, before it returns.
func resume(ctx context.Context, cfg Config, log *slog.Logger) (meta, error) {
	var top versionsSeen
	if cfg.Fence != nil && cfg.Fence.Generation() > 0 && cfg.Fence.Fresh() {
		// A new generation: every earlier writer numbered below it, so
		// nothing to scan (Open starts the sequences at the generation).
		// A gateway that renewed its own lease after losing its cache
		// may have numbered objects in it already, and scans.
	} else {
		var err error
		if top, err = highestVersions(ctx, cfg.Store); err != nil {
			return meta{}, fmt.Errorf("scan the store for existing versions: %w", err)
		}
	}
	mf, err := LatestManifest(ctx, cfg.Store)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if cfg.Size <= 0 {
			return meta{}, errors.New("new volume needs a size")
		}
		if top.version > 0 {
			log.Warn("the store holds objects of this volume but no recovery point: starting empty, above their versions", "highest_version", top.version)
		}
		m := meta{Version: 1, Size: cfg.Size, ChunkSize: cfg.ChunkSize, NextSeq: top.version + 1, Manifest: top.manifest}
		return m, m.save(cfg.FS, cfg.Dir)
	case err != nil:
		return meta{}, fmt.Errorf("read the newest recovery point: %w", err)
	}
	m := meta{Version: 1, Size: mf.Size, ChunkSize: mf.ChunkSize, NextSeq: top.version + 1, Manifest: max(top.manifest, mf.Sequence)}
	if cfg.Size > m.Size {
		m.Size = cfg.Size // grown after the recovery point
	}
	objs := newObjectMap()
	if mf.Format == manifestV4 {
		// A paged map: its base and deltas are kept in the cache, its
		// pages read as they are needed (pagemap.go). The journal
		// starts empty.
		if err := saveLazy(ctx, cfg.FS, cfg.Store, cfg.Dir, mf); err != nil {
			return meta{}, fmt.Errorf("recovery point %d: %w", mf.Sequence, err)
		}
		m.Lazy = manifestKey(mf.Sequence)
	} else if objs, err = manifestObjects(mf); err != nil {
		return meta{}, fmt.Errorf("recovery point %d: %w", mf.Sequence, err)
	}
	// The journal first: a crash before meta.json exists resumes again.
	if err := rewriteObjects(cfg.FS, cfg.Dir, objs); err != nil {
		return meta{}, err
	}
	if err := m.save(cfg.FS, cfg.Dir); err != nil {
		return meta{}, err
	}
	log.Info("cache started from the store's newest recovery point", "recovery_point", mf.Sequence,
		"created", mf.Created, "chunks", mf.StoredChunks(), "next_version", m.NextSeq)
	return m, nil
}

// versionsSeen are the highest numbers a store holds for one volume.
type versionsSeen struct {
	version  uint64 // chunk, log and map object versions share one sequence
	manifest uint64
}

// highestVersions lists the store's chunk, log and manifest keys.
func highestVersions(ctx context.Context, s store.Store) (versionsSeen, error) {
	var top versionsSeen
	err := s.List(ctx, "chunks/", func(o store.ObjectInfo) error {
		var idx int64
		var ver uint64
		if _, err := fmt.Sscanf(o.Key, "chunks/%016x/%016x", &idx, &ver); err == nil {
			top.version = max(top.version, ver)
		}
		return nil
	})
	if err == nil {
		err = s.List(ctx, "logs/", func(o store.ObjectInfo) error {
			if ver, ok := logSeq(o.Key); ok {
				top.version = max(top.version, ver)
			}
			return nil
		})
	}
	for _, p := range mapPrefixes {
		if err == nil {
			err = s.List(ctx, p, func(o store.ObjectInfo) error {
				if ver, ok := mapObjectSeq(o.Key); ok {
					top.version = max(top.version, ver)
				}
				return nil
			})
		}
	}
	if err == nil {
		err = s.List(ctx, "manifests/", func(o store.ObjectInfo) error {
			var seq uint64
			if _, err := fmt.Sscanf(strings.TrimPrefix(o.Key, "manifests/"), "%020d.json", &seq); err == nil {
				top.manifest = max(top.manifest, seq)
			}
			return nil
		})
	}
	return top, err
}

// manifestObjects is the object map a manifest describes.
func manifestObjects(mf Manifest) (*objectMap, error) {
	objs := newObjectMap()
	for i, key := range mf.Chunks {
		var idx int64
		if _, err := fmt.Sscan(i, &idx); err != nil || idx < 0 || idx*mf.ChunkSize >= mf.Size {
			return nil, fmt.Errorf("bad chunk index %q", i)
		}
		seq, ok := keySeq(idx, []byte(key))
		if !ok {
			return nil, fmt.Errorf("chunk %d: bad key %q", idx, key)
		}
		objs.put(idx, seq)
	}
	for i, list := range mf.Overlays {
		var idx int64
		if _, err := fmt.Sscan(i, &idx); err != nil || idx < 0 || idx*mf.ChunkSize >= mf.Size {
			return nil, fmt.Errorf("bad chunk index %q", i)
		}
		for _, o := range list {
			ov, err := o.private(mf.ChunkSize)
			if err != nil {
				return nil, fmt.Errorf("chunk %d: %w", idx, err)
			}
			objs.overlay(idx, ov)
		}
	}
	return objs, nil
}

// generationShift is lease.GenerationShift: a writer generation's object
// versions and recovery-point numbers start at generation<<generationShift.
const generationShift = lease.GenerationShift
