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
//   - attach.go: the Attacher seam (one per attach method) and the FUSE
//     attacher; fuse.go: the FUSE file that serves a volume over NBD
//     (internal/nbdclient), run in a helper process per volume.
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
// mounted (their data path runs in the helper processes). Durability: an
// fsync in a container reaches the gateway as NBD FLUSH before it returns.
package docker
