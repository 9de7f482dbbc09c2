package main

import (
	"slices"
	"testing"
)

func TestNameLast(t *testing.T) {
	for _, c := range []struct{ in, want []string }{
		{[]string{"k", "vm", "create", "web", "--cpus", "2"}, []string{"k", "vm", "create", "--cpus", "2", "web"}},
		{[]string{"k", "vm", "--api", "h:1", "stop", "web", "--force"}, []string{"k", "vm", "--api", "h:1", "stop", "--force", "web"}},
		{[]string{"k", "vm", "info", "web"}, []string{"k", "vm", "info", "web"}},
		{[]string{"k", "vm", "stop", "--force", "web"}, []string{"k", "vm", "stop", "--force", "web"}},
		{[]string{"k", "serve", "--listen", "x"}, []string{"k", "serve", "--listen", "x"}},
	} {
		if got := nameLast(c.in); !slices.Equal(got, c.want) {
			t.Errorf("nameLast(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
