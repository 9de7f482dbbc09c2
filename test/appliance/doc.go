// Package appliance tests the Ferry appliance image end to end
// (appliance/README.md, docs/TESTING.md "Appliance"): it builds the image
// with appliance/build (cached by its inputs), boots it under QEMU (TCG)
// with a data disk and user networking forwarded to 127.0.0.1, and drives
// the gateway inside from the host with real clients: the ferry CLI with
// and without the API token, qemu-io over NBD with TLS against the
// appliance's own certificate, iscsi-inq and qemu-io over iSCSI with
// CHAP, /metrics; then power cuts (kill -9 of QEMU under a flushing write
// load), an upgrade (a fresh system disk) booted with UEFI.
//
// It makes 10 power cuts; FERRY_APPLIANCE_LONG=1 makes 50,
// FERRY_APPLIANCE_CUTS=N makes N. `vagrant up` is scripts/vagrant-test
// (long mode, not here); this package runs `vagrant validate`.
package appliance
