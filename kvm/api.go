package kvm

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/internal/jsonapi"
	"github.com/ferry-io/ferry/kvm/wire"
)

// Handler serves ferry-kvm's HTTP API, /healthz and /metrics (from g).
// Every failure, an unknown endpoint or method included, is a JSON
// gwire.ErrorResponse.
func Handler(m *Manager, g prometheus.Gatherer, log *slog.Logger) http.Handler {
	mux := jsonapi.NewMux("ferry-kvm's API")
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) { jsonapi.WriteJSON(w, http.StatusOK, m.List()) })
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		var req wire.CreateRequest
		if !decode(w, r, &req) {
			return
		}
		in, err := m.Create(r.Context(), req)
		reply(w, log, http.StatusCreated, in, err)
	})
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		in, err := m.Info(r.PathValue("name"))
		reply(w, log, http.StatusOK, in, err)
	})
	mux.HandleFunc("POST /v1/vms/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		in, err := m.Start(r.Context(), r.PathValue("name"))
		reply(w, log, http.StatusOK, in, err)
	})
	mux.HandleFunc("POST /v1/vms/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		var req wire.StopRequest
		if !decode(w, r, &req) {
			return
		}
		in, err := m.Stop(r.Context(), r.PathValue("name"), req)
		reply(w, log, http.StatusOK, in, err)
	})
	mux.HandleFunc("DELETE /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		err := m.Remove(r.Context(), r.PathValue("name"), r.URL.Query().Get("keep-disks") != "")
		reply(w, log, http.StatusOK, struct{}{}, err)
	})
	mux.HandleFunc("GET /v1/vms/{name}/log", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if n <= 0 {
			n = 64 << 10
		}
		var buf bytes.Buffer
		if err := m.Log(r.PathValue("name"), n, &buf); err != nil {
			reply(w, log, 0, nil, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(buf.Bytes())
	})
	mux.HandleFunc("GET /v1/vms/{name}/console", func(w http.ResponseWriter, r *http.Request) {
		console(w, r, m, log)
	})
	mux.HandleFunc("POST /v1/vms/{name}/migrate", func(w http.ResponseWriter, r *http.Request) {
		var req wire.MigrateRequest
		if !decode(w, r, &req) {
			return
		}
		in, err := m.Migrate(r.Context(), r.PathValue("name"), req)
		reply(w, log, http.StatusAccepted, in, err)
	})
	mux.HandleFunc("POST /v1/incoming", func(w http.ResponseWriter, r *http.Request) {
		var req wire.IncomingRequest
		if !decode(w, r, &req) {
			return
		}
		if err := loopbackFromAfar(r.RemoteAddr, req); err != nil {
			reply(w, log, http.StatusBadRequest, nil, err)
			return
		}
		rep, err := m.Incoming(r.Context(), req)
		reply(w, log, http.StatusCreated, rep, err)
	})
	mux.HandleFunc("POST /v1/incoming/{name}/done", func(w http.ResponseWriter, r *http.Request) {
		var req wire.IncomingDoneRequest
		if !decode(w, r, &req) {
			return
		}
		reply(w, log, http.StatusOK, struct{}{}, m.IncomingDone(r.Context(), r.PathValue("name"), req))
	})
	mux.HandleFunc("POST /v1/incoming/{name}/park", func(w http.ResponseWriter, r *http.Request) {
		reply(w, log, http.StatusOK, struct{}{}, m.ParkIncoming(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/incoming/{name}/adopt", func(w http.ResponseWriter, r *http.Request) {
		var req wire.IncomingAdoptRequest
		if !decode(w, r, &req) {
			return
		}
		rep, err := m.AdoptIncoming(r.Context(), r.PathValue("name"), req)
		reply(w, log, http.StatusOK, rep, err)
	})
	mux.HandleFunc("DELETE /v1/incoming/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, log, http.StatusOK, struct{}{}, m.IncomingAbort(r.Context(), r.PathValue("name")))
	})
	return mux
}

// TokenFile is the API token's file name in the daemon's state directory.
const TokenFile = apiauth.TokenFile

// apiMessages are ferry-kvm's 401 replies: where the token is, never the
// token.
var apiMessages = apiauth.Messages{
	Missing: "this ferry-kvm's API needs its token (Authorization: Bearer TOKEN): give the CLI --token-file, FERRY_KVM_TOKEN_FILE or FERRY_KVM_TOKEN (vm migrate: the destination's with --to-token-file); the daemon keeps it in its --state directory's " + TokenFile + " file",
	Wrong:   "the API token sent is not this ferry-kvm's (compare with the " + TokenFile + " file in its --state directory)",
}

// RequireToken puts the API token in front of h (Handler's mux): every
// request but GET /healthz, and /metrics when metricsPublic, must carry
// "Authorization: Bearer TOKEN"; others get 401 with
// gwire.CodeUnauthenticated. See apiauth.RequireToken.
func RequireToken(h http.Handler, token string, metricsPublic bool) http.Handler {
	open := []string{"/healthz"}
	if metricsPublic {
		open = append(open, "/metrics")
	}
	return apiauth.RequireToken(h, token, apiMessages, open...)
}

// console upgrades the request to a raw stream joined to the VM's serial
// console socket.
func console(w http.ResponseWriter, r *http.Request, m *Manager, log *slog.Logger) {
	path, err := m.ConsolePath(r.PathValue("name"))
	if err != nil {
		reply(w, log, 0, nil, err)
		return
	}
	sc, err := net.Dial("unix", path)
	if err != nil {
		reply(w, log, 0, nil, err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		sc.Close()
		http.Error(w, "no hijack", http.StatusInternalServerError)
		return
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		sc.Close()
		return
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ferry-console\r\n\r\n")
	brw.Flush()
	done := make(chan struct{}, 2)
	go func() { io.Copy(sc, brw); done <- struct{}{} }()
	go func() { io.Copy(nc, sc); done <- struct{}{} }()
	<-done
	nc.Close()
	sc.Close()
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(v); err != nil && !errors.Is(err, io.EOF) {
		jsonapi.WriteJSON(w, http.StatusBadRequest, gwire.ErrorResponse{Error: "bad request body: " + err.Error(), Code: gwire.CodeInvalid})
		return false
	}
	return true
}

func reply(w http.ResponseWriter, log *slog.Logger, status int, v any, err error) {
	if err == nil {
		jsonapi.WriteJSON(w, status, v)
		return
	}
	code := gwire.CodeOf(err)
	switch code {
	case gwire.CodeNotFound:
		status = http.StatusNotFound
	case gwire.CodeExists, gwire.CodeBusy:
		status = http.StatusConflict
	case gwire.CodeInvalid:
		status = http.StatusBadRequest
	case gwire.CodeDenied:
		status = http.StatusForbidden
	default:
		status = http.StatusInternalServerError
		log.Error("request failed", "err", err)
	}
	jsonapi.WriteJSON(w, status, gwire.ErrorResponse{Error: err.Error(), Code: code})
}
