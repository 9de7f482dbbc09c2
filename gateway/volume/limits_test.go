package volume

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A volume larger than the pool's file system allows is refused with the
// limit stated (ext4 with 4 KiB blocks: 16 TiB; XFS allows every size).
func TestSizeBeyondFileSystemLimit(t *testing.T) {
	dir := t.TempDir()
	limit, err := maxFileSize(dir)
	if err != nil {
		t.Fatal(err)
	}
	if limit <= 0 || limit%512 != 0 {
		t.Fatalf("maxFileSize = %d", limit)
	}
	ctx := context.Background()
	m, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(ctx)
	if limit == MaxSize {
		t.Skipf("the file system under %s allows files of every volume size", dir)
	}
	_, err = m.Create(ctx, "big", limit+512, CreateOptions{})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "largest file") {
		t.Fatalf("create beyond the limit: %v", err)
	}
	if _, err := m.Create(ctx, "max", limit, CreateOptions{}); err != nil {
		t.Fatalf("create at the limit %d: %v", limit, err)
	}
	if _, err := m.Resize(ctx, "max", limit+512); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "largest file") {
		t.Fatalf("resize beyond the limit: %v", err)
	}
}
