package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"time"
)

// ContentType is the media type of the plugin protocol's replies.
const ContentType = "application/vnd.docker.plugins.v1+json"

// maxBody caps a request body; larger ones get an error reply.
const maxBody = 1 << 20

// Requests and replies of Docker's volume plugin protocol
// (https://docs.docker.com/engine/extend/plugins_volume/).
type (
	nameRequest struct {
		Name string
	}
	createRequest struct {
		Name string
		Opts map[string]string
	}
	mountRequest struct {
		Name string
		ID   string
	}
	errResponse struct {
		Err string
	}
	mountResponse struct {
		Mountpoint string
		Err        string `json:",omitempty"`
	}
	volumeJSON struct {
		Name       string
		Mountpoint string         `json:",omitempty"`
		CreatedAt  string         `json:",omitempty"`
		Status     map[string]any `json:",omitempty"`
	}
	getResponse struct {
		Volume *volumeJSON `json:",omitempty"`
		Err    string      `json:",omitempty"`
	}
	listResponse struct {
		Volumes []volumeJSON
		Err     string `json:",omitempty"`
	}
)

// Handler returns the plugin protocol's HTTP handler: one function per
// endpoint. Every failure, including a malformed or oversized body, an
// unknown endpoint and a panic, is an {"Err": "..."} reply.
func Handler(d *Driver, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &apiHandler{d: d, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /Plugin.Activate", h.activate)
	mux.HandleFunc("POST /VolumeDriver.Create", h.create)
	mux.HandleFunc("POST /VolumeDriver.Remove", h.remove)
	mux.HandleFunc("POST /VolumeDriver.Mount", h.mount)
	mux.HandleFunc("POST /VolumeDriver.Unmount", h.unmount)
	mux.HandleFunc("POST /VolumeDriver.Path", h.path)
	mux.HandleFunc("POST /VolumeDriver.Get", h.get)
	mux.HandleFunc("POST /VolumeDriver.List", h.list)
	mux.HandleFunc("POST /VolumeDriver.Capabilities", h.capabilities)
	mux.HandleFunc("/", unknownEndpoint)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				log.Error("panic in plugin request", "path", r.URL.Path, "panic", p)
				reply(w, http.StatusInternalServerError, errResponse{Err: fmt.Sprintf("internal error: %v", p)})
			}
		}()
		log.Debug("plugin request", "path", r.URL.Path)
		if p := r.URL.Path; p != path.Clean(p) {
			// ServeMux would redirect to the clean path, a reply no
			// plugin client reads.
			unknownEndpoint(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func unknownEndpoint(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusNotFound, errResponse{Err: fmt.Sprintf("unknown endpoint %s %s: this plugin implements VolumeDriver", r.Method, r.URL.Path)})
}

type apiHandler struct {
	d   *Driver
	log *slog.Logger
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", ContentType)
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// decode reads a request body into v; on failure it replies and returns
// false. An empty body is an empty request (Docker sends none to some
// endpoints).
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	err := dec.Decode(v)
	if err == nil || err == io.EOF {
		return true
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		reply(w, http.StatusRequestEntityTooLarge, errResponse{Err: fmt.Sprintf("request body larger than %d bytes", maxBody)})
		return false
	}
	reply(w, http.StatusBadRequest, errResponse{Err: "malformed request body: " + err.Error()})
	return false
}

// fail replies with err as Docker shows it.
func (h *apiHandler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrNoVolume) {
		// Docker asks Get before every Create: not news.
		h.log.Debug("plugin request failed", "path", r.URL.Path, "err", err)
	} else {
		h.log.Warn("plugin request failed", "path", r.URL.Path, "err", err)
	}
	reply(w, http.StatusInternalServerError, errResponse{Err: err.Error()})
}

func (h *apiHandler) activate(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusOK, map[string][]string{"Implements": {"VolumeDriver"}})
}

func (h *apiHandler) capabilities(w http.ResponseWriter, r *http.Request) {
	// Global: every Docker host pointed at the same gateway sees the
	// same volumes.
	reply(w, http.StatusOK, map[string]any{"Capabilities": map[string]string{"Scope": "global"}})
}

func (h *apiHandler) create(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if !decode(w, r, &req) {
		return
	}
	if err := h.d.Create(r.Context(), req.Name, req.Opts); err != nil {
		h.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, errResponse{})
}

func (h *apiHandler) remove(w http.ResponseWriter, r *http.Request) {
	var req nameRequest
	if !decode(w, r, &req) {
		return
	}
	if err := h.d.Remove(r.Context(), req.Name); err != nil {
		h.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, errResponse{})
}

func (h *apiHandler) mount(w http.ResponseWriter, r *http.Request) {
	var req mountRequest
	if !decode(w, r, &req) {
		return
	}
	// Attaching must finish even if Docker gives up waiting: the state
	// then counts the mount, and Docker's Unmount undoes it.
	mp, err := h.d.Mount(context.WithoutCancel(r.Context()), req.Name, req.ID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, mountResponse{Mountpoint: mp})
}

func (h *apiHandler) unmount(w http.ResponseWriter, r *http.Request) {
	var req mountRequest
	if !decode(w, r, &req) {
		return
	}
	if err := h.d.Unmount(context.WithoutCancel(r.Context()), req.Name, req.ID); err != nil {
		h.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, errResponse{})
}

func (h *apiHandler) path(w http.ResponseWriter, r *http.Request) {
	var req nameRequest
	if !decode(w, r, &req) {
		return
	}
	mp, err := h.d.Path(r.Context(), req.Name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, mountResponse{Mountpoint: mp})
}

func (h *apiHandler) get(w http.ResponseWriter, r *http.Request) {
	var req nameRequest
	if !decode(w, r, &req) {
		return
	}
	vi, err := h.d.Get(r.Context(), req.Name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, getResponse{Volume: &volumeJSON{Name: vi.Name, Mountpoint: vi.Mountpoint, CreatedAt: vi.CreatedAt, Status: vi.Status}})
}

func (h *apiHandler) list(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if !decode(w, r, &req) {
		return
	}
	out := listResponse{Volumes: []volumeJSON{}}
	for _, vi := range h.d.List(r.Context()) {
		out.Volumes = append(out.Volumes, volumeJSON{Name: vi.Name, Mountpoint: vi.Mountpoint})
	}
	reply(w, http.StatusOK, out)
}

// Serve answers the plugin protocol on a unix socket at path until ctx
// ends, then removes the socket. A socket file nobody answers on (left by
// a crash) is replaced; one a live plugin answers on is an error.
func Serve(ctx context.Context, path string, h http.Handler, log *slog.Logger) error {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another plugin answers on %s", path)
	}
	os.Remove(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	log.Info("docker volume plugin listening", "socket", path)
	select {
	case err := <-done:
		os.Remove(path)
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	os.Remove(path)
	return err
}
