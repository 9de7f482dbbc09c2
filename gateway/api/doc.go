// Package api is the gateway's admin HTTP API, used by the ferry CLI (and a
// future console). It serves JSON under /v1, Prometheus metrics at /metrics
// and a liveness check at /healthz. Errors are JSON objects
// {"error": "..."} with 400 for bad requests, 404 for unknown volumes, 409
// for conflicts (exists, busy) and 500 otherwise.
//
//	GET    /v1/volumes                 list volumes
//	POST   /v1/volumes                 create {"name":..., "size":...}
//	GET    /v1/volumes/{name}          one volume
//	PATCH  /v1/volumes/{name}          grow and/or change access {"size":..., "iscsi":{...}}
//	DELETE /v1/volumes/{name}?force=1  remove
//	GET    /v1/pool                    local pool capacity
package api
