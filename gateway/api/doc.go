// Package api is the gateway's admin HTTP API, used by the ferry CLI (and a
// future console). It serves JSON under /v1, Prometheus metrics at
// /metrics, a liveness check at /healthz (200 while the process serves)
// and a readiness check at /readyz (200 when every S3 store answers, 503
// with the failing stores otherwise). Errors are JSON objects
// {"error": "...", "code": "..."} with 400 for bad requests, 403 for access
// refused, 404 for unknown volumes, 409 for conflicts (exists, busy) and
// 500 otherwise; the code names the sentinel (wire.CodeExists, ...).
// Request and reply types are in package wire and the client in package
// client, which import only the standard library.
//
//	GET    /v1/status                  the gateway: version, listeners, pool, stores, volumes
//	GET    /v1/volumes                 list volumes, with their attach URLs
//	POST   /v1/volumes                 create {"name":..., "size":..., "access":{...}}
//	GET    /v1/volumes/{name}          one volume
//	PATCH  /v1/volumes/{name}          grow and/or change access {"size":..., "access":{...}}
//	DELETE /v1/volumes/{name}?force=1  remove
//	GET    /v1/pool                    local pool capacity
//	POST   /v1/volumes/{name}/release?force=1  hand the volume over: final recovery point, lease given up
//	POST   /v1/adopt                   serve a volume a store holds {"store":..., "volume":..., "force":..., "steal":...}
//	GET    /v1/stores/{name}/volumes   the volumes a store holds, with recovery points and leases
//	GET    /v1/volumes/{name}/snapshots          list snapshots
//	POST   /v1/volumes/{name}/snapshots          create {"name":...}
//	DELETE /v1/volumes/{name}/snapshots/{snap}   remove
//	POST   /v1/clones                  a volume from a snapshot {"source":"vol@snap", "name":...}
package api
