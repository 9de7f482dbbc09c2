// Package acceptance holds Ferry's end-to-end tests: they build the real
// ferry binary, run `ferry serve` as a separate process on loopback ports,
// drive it with the CLI and with the programs users run (nbdinfo, nbdcopy,
// qemu-io, fio), and kill it with SIGKILL to prove what survives.
//
// Programs missing from the machine skip a test, or fail it when
// FERRY_TEST_REQUIRE_TOOLS=1 (as scripts/test sets).
package acceptance
