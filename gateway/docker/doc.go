// Package docker is Ferry's Docker volume plugin: `docker volume create -d
// ferry` makes a gateway volume, and `docker run -v NAME:/data` attaches
// it on this host, formats it if it is empty (never otherwise), and mounts
// it. `ferry docker-plugin` runs it.
//
// The files follow the shape of rclone's cmd/serve/docker:
//
//   - api.go: the plugin protocol over HTTP on a unix socket, one handler
//     per endpoint; every failure is an {"Err": ...} reply.
//   - driver.go: the operations, with a state file (state.go) saved
//     atomically after every change and reconciled at start
//     (reconcile.go) with /proc/self/mountinfo and the loop devices.
//   - volume.go: one type per volume with its mount counts per Mount ID.
//   - attach.go: the Attacher seam (one per attach method), picking one,
//     the gateway's addresses as this host reaches them, and the FUSE
//     attacher; fuse.go: the FUSE file that serves a volume over NBD
//     (internal/nbdclient), run in a helper process per volume.
//   - nbd.go: the kernel NBD client (internal/nbdnl, generic netlink) with
//     a keeper process per volume that reconnects it; iscsi.go: open-iscsi.
//   - stale.go: dropping mount counts whose Unmount never came (the
//     plugin was down when a container stopped) once no mount namespace
//     holds the volume; lock.go: one plugin per state directory.
//   - names.go, options.go: Docker names to gateway names, -o options.
//
// The plugin talks to the gateway only through gateway/api/client; it
// links no backend and not gateway/volume.
//
// Contract with Docker: Mount returns once the file system is mounted;
// Unmount of the last Mount ID unmounts and detaches; Remove of a volume
// in use is refused; a restart of the plugin keeps mounted volumes
// mounted (their data path runs in helper processes or the kernel).
// Durability: an fsync in a container reaches the gateway as a flush (NBD
// FLUSH, SCSI SYNCHRONIZE CACHE) before it returns.
package docker
