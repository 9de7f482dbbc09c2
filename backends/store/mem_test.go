package store_test

import (
	"testing"

	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/storetest"
)

func TestMemConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return store.NewMem() })
}
