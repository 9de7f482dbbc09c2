package bootid

import (
	"regexp"
	"testing"
)

func TestGet(t *testing.T) {
	id := Get()
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(id) {
		t.Fatalf("boot id %q is not a UUID", id)
	}
	if again := Get(); again != id {
		t.Fatalf("boot id changed from %q to %q", id, again)
	}
}
