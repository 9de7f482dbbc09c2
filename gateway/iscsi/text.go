package iscsi

import (
	"strconv"
	"strings"
)

// kv is an ordered list of text keys (RFC 7143 §6): key=value pairs each
// ended by a NUL byte.
type kv [][2]string

func parseKV(b []byte) kv {
	var out kv
	for _, f := range strings.Split(string(b), "\x00") {
		if f == "" {
			continue
		}
		k, v, _ := strings.Cut(f, "=")
		out = append(out, [2]string{k, v})
	}
	return out
}

func (l kv) get(k string) (string, bool) {
	for _, p := range l {
		if p[0] == k {
			return p[1], true
		}
	}
	return "", false
}

func (l *kv) add(k, v string) { *l = append(*l, [2]string{k, v}) }

func (l kv) encode() []byte {
	var b strings.Builder
	for _, p := range l {
		b.WriteString(p[0])
		b.WriteByte('=')
		b.WriteString(p[1])
		b.WriteByte(0)
	}
	return []byte(b.String())
}

// numValue parses a numerical key value; ok is false for anything that is
// not a decimal number fitting 32 bits.
func numValue(v string) (uint32, bool) {
	n, err := strconv.ParseUint(v, 10, 32)
	return uint32(n), err == nil
}
