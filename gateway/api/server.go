package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/jsonapi"
)

// Config configures the API's handler.
type Config struct {
	// Manager is the gateway's volume manager.
	Manager *volume.Manager
	// Gatherer serves /metrics; nil serves none.
	Gatherer prometheus.Gatherer
	// Logger receives failed requests; nil discards them.
	Logger *slog.Logger
	// Gateway describes the running gateway for /v1/status and the
	// attach URLs of volumes.
	Gateway Gateway
}

// Handler returns the API's HTTP handler.
func Handler(cfg Config) http.Handler {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{m: cfg.Manager, log: log, gw: cfg.Gateway}
	mux := jsonapi.NewMux("the gateway API")
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", h.ready)
	mux.HandleFunc("GET /v1/status", h.status)
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /v1/volumes", h.list)
	mux.HandleFunc("POST /v1/volumes", h.create)
	mux.HandleFunc("GET /v1/volumes/{name}", h.info)
	mux.HandleFunc("PATCH /v1/volumes/{name}", h.update)
	mux.HandleFunc("DELETE /v1/volumes/{name}", h.remove)
	mux.HandleFunc("GET /v1/pool", h.pool)
	mux.HandleFunc("POST /v1/volumes/{name}/checkpoint", h.checkpoint)
	mux.HandleFunc("GET /v1/volumes/{name}/location", h.location)
	mux.HandleFunc("GET /v1/stores", h.stores)
	mux.HandleFunc("POST /v1/stores", h.addStore)
	mux.HandleFunc("GET /v1/stores/{name}", h.storeInfo)
	mux.HandleFunc("DELETE /v1/stores/{name}", h.removeStore)
	mux.HandleFunc("GET /v1/stores/{name}/volumes", h.storeVolumes)
	mux.HandleFunc("POST /v1/volumes/{name}/release", h.release)
	mux.HandleFunc("POST /v1/adopt", h.adopt)
	mux.HandleFunc("POST /v1/volumes/{name}/migrate", h.migrate)
	mux.HandleFunc("DELETE /v1/volumes/{name}/migrate", h.cancelMigration)
	mux.HandleFunc("GET /v1/volumes/{name}/snapshots", h.snapshots)
	mux.HandleFunc("POST /v1/volumes/{name}/snapshots", h.createSnapshot)
	mux.HandleFunc("DELETE /v1/volumes/{name}/snapshots/{snap}", h.removeSnapshot)
	mux.HandleFunc("POST /v1/clones", h.clone)
	registerAttachments(mux.ServeMux, h)
	return mux
}

type handler struct {
	m   *volume.Manager
	log *slog.Logger
	gw  Gateway
	att *attachments // hosts holding volumes (attachments.go)
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	jsonapi.WriteJSON(w, http.StatusOK, h.volumes(r, h.m.Volumes(r.Context())...))
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	var req wire.CreateRequest
	if !decode(w, r, &req) {
		return
	}
	in, err := h.m.Create(r.Context(), req.Name, req.Size, volume.CreateOptions{Access: req.Access, Store: req.Store, ChunkSize: req.ChunkSize})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusCreated, h.volumes(r, in)[0])
}

func (h *handler) info(w http.ResponseWriter, r *http.Request) {
	in, err := h.m.Info(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, h.volumes(r, in)[0])
}

func (h *handler) update(w http.ResponseWriter, r *http.Request) {
	var req wire.UpdateRequest
	if !decode(w, r, &req) {
		return
	}
	name := r.PathValue("name")
	in, err := h.m.Info(r.Context(), name)
	if err == nil && req.Access != nil {
		in, err = h.m.UpdateAccess(r.Context(), name, *req.Access)
	}
	if err == nil && req.Size != nil {
		in, err = h.m.Resize(r.Context(), name, *req.Size)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, h.volumes(r, in)[0])
}

func (h *handler) remove(w http.ResponseWriter, r *http.Request) {
	force := r.URL.Query().Get("force") == "1"
	if err := h.m.Remove(r.Context(), r.PathValue("name"), force); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) pool(w http.ResponseWriter, r *http.Request) {
	jsonapi.WriteJSON(w, http.StatusOK, h.m.Pool(r.Context()))
}

func (h *handler) checkpoint(w http.ResponseWriter, r *http.Request) {
	mf, err := h.m.Checkpoint(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, wire.CheckpointResponse{Sequence: mf.Sequence, Created: mf.Created, Chunks: mf.StoredChunks()})
}

func (h *handler) location(w http.ResponseWriter, r *http.Request) {
	loc, err := h.m.Location(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, loc)
}

func (h *handler) stores(w http.ResponseWriter, r *http.Request) {
	jsonapi.WriteJSON(w, http.StatusOK, h.m.Stores(r.Context()))
}

func (h *handler) addStore(w http.ResponseWriter, r *http.Request) {
	var req wire.StoreConfig
	if !decode(w, r, &req) {
		return
	}
	v, err := h.m.AddStore(r.Context(), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusCreated, v)
}

func (h *handler) storeInfo(w http.ResponseWriter, r *http.Request) {
	v, err := h.m.StoreInfo(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, v)
}

func (h *handler) removeStore(w http.ResponseWriter, r *http.Request) {
	if err := h.m.RemoveStore(r.Context(), r.PathValue("name")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		jsonapi.WriteJSON(w, http.StatusBadRequest, wire.ErrorResponse{Error: "bad request body: " + err.Error(), Code: wire.CodeInvalid})
		return false
	}
	return true
}

// fail maps an error to its status code; sentinels decide, never strings.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, volume.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, volume.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, volume.ErrExists), errors.Is(err, volume.ErrBusy):
		code = http.StatusConflict
	case errors.Is(err, volume.ErrDenied):
		code = http.StatusForbidden
	case errors.Is(err, context.Canceled):
		code = 499
	}
	if code == http.StatusInternalServerError {
		h.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	jsonapi.WriteJSON(w, code, wire.ErrorResponse{Error: err.Error(), Code: wire.CodeOf(err)})
}

func (h *handler) storeVolumes(w http.ResponseWriter, r *http.Request) {
	vs, err := h.m.StoreVolumes(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, vs)
}

func (h *handler) release(w http.ResponseWriter, r *http.Request) {
	mf, err := h.m.Release(r.Context(), r.PathValue("name"), r.URL.Query().Get("force") == "1")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, wire.CheckpointResponse{Sequence: mf.Sequence, Created: mf.Created, Chunks: mf.StoredChunks()})
}

func (h *handler) migrate(w http.ResponseWriter, r *http.Request) {
	var req wire.MigrateRequest
	if !decode(w, r, &req) {
		return
	}
	in, err := h.m.Migrate(r.Context(), r.PathValue("name"), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusAccepted, h.volumes(r, in)[0])
}

func (h *handler) cancelMigration(w http.ResponseWriter, r *http.Request) {
	in, err := h.m.CancelMigration(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, h.volumes(r, in)[0])
}

func (h *handler) adopt(w http.ResponseWriter, r *http.Request) {
	var req wire.AdoptRequest
	if !decode(w, r, &req) {
		return
	}
	resp, in, err := h.m.Adopt(r.Context(), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	resp.Volume = h.volumes(r, in)[0]
	jsonapi.WriteJSON(w, http.StatusCreated, resp)
}

func (h *handler) snapshots(w http.ResponseWriter, r *http.Request) {
	list, err := h.m.ListSnapshots(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusOK, list)
}

func (h *handler) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req wire.SnapshotRequest
	if !decode(w, r, &req) {
		return
	}
	sn, err := h.m.CreateSnapshot(r.Context(), r.PathValue("name"), req.Name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusCreated, sn)
}

func (h *handler) removeSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := h.m.RemoveSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snap")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) clone(w http.ResponseWriter, r *http.Request) {
	var req wire.CloneRequest
	if !decode(w, r, &req) {
		return
	}
	in, err := h.m.Clone(r.Context(), req.Source, req.Name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.WriteJSON(w, http.StatusCreated, h.volumes(r, in)[0])
}
