// Package volume is Ferry's volume catalog: named, thin-provisioned volumes,
// each a device.Device from a backend, with crash-safe metadata. Frontends
// see it only through the Exports interface.
package volume
