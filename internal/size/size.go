// Package size parses and prints byte sizes the way Ferry's CLI and
// messages write them: binary units, 10G = 10 GiB = 10 * 2^30 bytes.
package size

import (
	"fmt"
	"strconv"
	"strings"
)

// Parse parses a byte size: a plain number of bytes, or a number with a
// binary unit K, M, G, T, P (also written KiB/KB, MiB/MB ...; all are
// powers of 1024, as in qemu-img). Fractions are allowed when the result is
// a whole number of bytes ("1.5G").
func Parse(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("size is empty: give bytes or a number with K, M, G, T or P (e.g. 10G)")
	}
	upper := strings.ToUpper(s)
	upper = strings.TrimSuffix(upper, "B")
	upper = strings.TrimSuffix(upper, "I")
	mult := int64(1)
	if n := len(upper); n > 0 {
		switch upper[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult != 1 {
			upper = upper[:n-1]
		}
	}
	if mult == 1 && upper != strings.ToUpper(s) && !strings.EqualFold(s, upper+"B") {
		return 0, fmt.Errorf("size %q: unknown unit (use K, M, G, T or P, e.g. 512M, 10G, 10GiB)", orig)
	}
	if n, err := strconv.ParseInt(upper, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("size %q is negative", orig)
		}
		if n > (1<<63-1)/mult {
			return 0, fmt.Errorf("size %q is too large: sizes stop short of 8 EiB (2^63 bytes)", orig)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(upper, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: not a size (examples: 512M, 10G, 10GiB, 1T, 1048576)", orig)
	}
	v := f * float64(mult)
	if v >= 1<<63 {
		return 0, fmt.Errorf("size %q is too large: sizes stop short of 8 EiB (2^63 bytes)", orig)
	}
	if v != float64(int64(v)) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", orig)
	}
	return int64(v), nil
}

// Format prints bytes with a binary unit, exact when possible.
func Format(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d %s", int64(f), units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
