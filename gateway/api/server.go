package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-io/ferry/gateway/volume"
)

// CreateRequest is the body of POST /v1/volumes.
type CreateRequest struct {
	Name  string               `json:"name"`
	Size  int64                `json:"size"`
	ISCSI *volume.AccessUpdate `json:"iscsi,omitempty"`
}

// UpdateRequest is the body of PATCH /v1/volumes/{name}: a new size (grow
// only) and/or access-control changes.
type UpdateRequest struct {
	Size  *int64               `json:"size,omitempty"`
	ISCSI *volume.AccessUpdate `json:"iscsi,omitempty"`
}

// ErrorResponse is the body of every error reply.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Handler returns the API's HTTP handler. gatherer serves /metrics.
func Handler(m *volume.Manager, gatherer prometheus.Gatherer, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{m: m, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/volumes", h.list)
	mux.HandleFunc("POST /v1/volumes", h.create)
	mux.HandleFunc("GET /v1/volumes/{name}", h.info)
	mux.HandleFunc("PATCH /v1/volumes/{name}", h.update)
	mux.HandleFunc("DELETE /v1/volumes/{name}", h.remove)
	mux.HandleFunc("GET /v1/pool", h.pool)
	return mux
}

type handler struct {
	m   *volume.Manager
	log *slog.Logger
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.m.Volumes(r.Context()))
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if !decode(w, r, &req) {
		return
	}
	in, err := h.m.Create(r.Context(), req.Name, req.Size, volume.CreateOptions{Access: req.ISCSI})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, in)
}

func (h *handler) info(w http.ResponseWriter, r *http.Request) {
	in, err := h.m.Info(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, in)
}

func (h *handler) update(w http.ResponseWriter, r *http.Request) {
	var req UpdateRequest
	if !decode(w, r, &req) {
		return
	}
	name := r.PathValue("name")
	in, err := h.m.Info(r.Context(), name)
	if err == nil && req.ISCSI != nil {
		in, err = h.m.UpdateAccess(r.Context(), name, *req.ISCSI)
	}
	if err == nil && req.Size != nil {
		in, err = h.m.Resize(r.Context(), name, *req.Size)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, in)
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
	writeJSON(w, http.StatusOK, h.m.Pool(r.Context()))
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: "bad request body: " + err.Error()})
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
	case errors.Is(err, context.Canceled):
		code = 499
	}
	if code == http.StatusInternalServerError {
		h.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, ErrorResponse{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
