// Package console is the Ferry appliance's own logic (appliance/README.md):
// the status screen and menu `ferry console` shows on tty1 and the serial
// port, and the first-boot setup `ferry console firstboot` runs before
// the gateway starts.
//
// Everything the appliance must keep across a system-disk upgrade lives in
// the state directory on the data disk (Paths.State, normally
// /var/lib/ferry/appliance): the NBD TLS certificate and key, the default
// iSCSI CHAP credentials (an environment file ferry.service reads), the
// static network settings and the NoCloud instance-id already applied.
// The API token is the gateway's own file, /var/lib/ferry/api-token.
//
// Operations that act on the system (restarting the gateway, reloading
// the network, powering off) go through the System interface, so they
// can be replaced in tests.
package console
