package wire

import (
	"errors"
	"fmt"
	"testing"
)

func TestCodesRoundTrip(t *testing.T) {
	for _, c := range codes {
		wrapped := fmt.Errorf("create volume %q: %w", "v", c.err)
		if got := CodeOf(wrapped); got != c.code {
			t.Errorf("CodeOf(%v) = %q, want %q", wrapped, got, c.code)
		}
		if !errors.Is(ErrOf(c.code), c.err) {
			t.Errorf("ErrOf(%q) = %v", c.code, ErrOf(c.code))
		}
	}
	if CodeOf(errors.New("disk on fire")) != "" || ErrOf("") != nil || ErrOf("nonsense") != nil {
		t.Error("an error without a sentinel got a code")
	}
}
