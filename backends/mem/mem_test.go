package mem_test

import (
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/devicetest"
	"github.com/ferry-io/ferry/backends/mem"
)

type crashable struct{ *mem.Device }

func (c crashable) Crash(t *testing.T) device.Device { return crashable{c.Device.Crash()} }

func TestConformance(t *testing.T) {
	devicetest.Run(t, func(t *testing.T, size int64) device.Device {
		return crashable{mem.New(size)}
	})
}
