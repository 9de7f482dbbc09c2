// Package kvm is ferry-kvm's VM manager: it runs QEMU virtual machines
// whose disks are Ferry volumes, which QEMU attaches itself through its
// NBD block driver (cache=none, discard=unmap, reconnect-delay so a
// gateway restart is a stall, not an I/O error), and live-migrates them
// between ferry-kvm hosts on the same gateway or on two gateways sharing
// an S3 bucket.
//
// One VM type owns one QEMU process (started in its own session, so it
// survives the daemon), its QMP socket and its state file (vm.json under
// STATE/vms/NAME, written atomically). The VM's state changes only in
// VM.transition. A restarted daemon adopts running QEMUs through their
// pid (checked against the process start time) and QMP socket; a QEMU
// that exits on its own is seen when its QMP connection ends and reported
// as crashed with its last stderr lines.
//
// Each disk's volume is held through the gateway's attachment records
// (lease renewed every wire.AttachRenew) under the holder name
// "HOSTID:VM", so another VM or host cannot attach it. During a live
// migration the destination's QEMU opens the volumes before it owns them
// (QEMU keeps an incoming VM's disks inactive); the source migrates with
// the pause-before-switchover capability and, while the guest is paused,
// moves every attachment to the destination's holder (handOff), then lets
// QEMU switch over. On any failure the lease moves back, the source's
// guest resumes and the destination's QEMU is quit.
//
// A destination on another gateway sharing the bucket opens the source
// gateway's exports and keeps the guest paused (-S) after the switchover
// while each volume is released by the source's gateway and adopted by
// its own; each disk is a raw node over an NBD node, and blockdev-reopen
// switches the raw node's file child to the new gateway's export
// (crossgw.go).
//
// Lock order: Manager.mu before VM.mu; VM.hmu (an incoming hand-over
// between gateways) before VM.mu.
package kvm
