package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// routes is the one place where every route is declared; openapi.yaml
// must list the same ones (api/openapi_test.go checks).
func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	// No StripSlashes/CleanPath: in a topic "a//b" and "a/" are names of
	// their own. No middleware.Timeout: each request's deadline is its
	// own ?timeout, applied in the handler.
	r.Use(s.guardBody)
	r.Use(s.observe) // and the request id of the log line
	r.Use(middleware.Recoverer)

	r.NotFound(s.notFound)
	r.MethodNotAllowed(s.methodNotAllowed)

	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{}))
	r.Post("/rpc/*", s.rpc)
	r.Post("/publish/*", s.publish)
	r.Post("/batch", s.batch)
	r.Get("/requests/{id}", s.getRequest)
	r.Delete("/requests/{id}", s.cancelRequest)
	r.Get("/requests/{id}/reply", s.getReply)
	s.mux = r
	return r
}
