// Package guest boots a small Linux guest under QEMU (TCG, no KVM needed)
// for tests that need kernel pieces the host may lack: the nbd module and
// open-iscsi's kernel initiator. scripts/guest-image builds the image (a
// Debian kernel and an initramfs with a minimal Debian root, cached under
// ~/.cache/ferry/guest by a hash of the script); Require returns it, built
// once per test process.
//
// Each guest gets the image's initramfs plus a second cpio archive holding
// the test's files (the ferry binary) and its script, /ferry-test/run,
// which the guest's /init runs after bringing up the network and iscsid,
// then powers off. The guest reaches the host's loopback ports listed in
// Config.Forward at HostAddr (10.0.2.100) under the same port numbers,
// through QEMU user networking with one socat per connection, so a gateway
// killed and restarted on its port is reachable again.
//
// The host follows the guest through its console (ttyS0, read line by
// line): lines holding "FERRY-GUEST: TEXT" are markers (Next, Expect); the
// guest's /init prints "FERRY-GUEST: ready" before the script and
// "FERRY-GUEST: exit RC" after it (Wait). The host talks to the guest by
// writing lines to its second serial port (Send; /dev/ttyS1 in the guest).
// A guest script opens /dev/ttyS1 (exec 3</dev/ttyS1) before it tells the
// host it listens: what reaches a serial port nobody holds open is lost.
package guest
