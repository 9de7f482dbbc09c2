package mem_test

import (
	"testing"
	"time"

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

// TestCrashUnderLoad: the crash simulation other backends are measured
// against passes devicetest.CrashUnderLoad itself.
func TestCrashUnderLoad(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if _, err := devicetest.CrashUnderLoad(crashable{mem.New(4 << 20)}, func(d device.Device) (device.Device, error) {
		c := d.(crashable)
		after := crashable{c.Device.Crash()}
		c.Close()
		return after, nil
	}, 20, seed); err != nil {
		t.Fatalf("%v (seed %d)", err, seed)
	}
}
