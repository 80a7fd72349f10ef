package api

import (
	"errors"
	"html"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// fallback serves every path no route matched: a JSON 404 under /api, the
// frontend everywhere else.
func (s *Server) fallback(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/api" || strings.HasPrefix(r.URL.Path, "/api/") {
		writeError(w, http.StatusNotFound, "not_found", "no API endpoint "+r.Method+" "+r.URL.Path)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	s.serveStatic(w, r)
}

// serveStatic serves a file of the built frontend, or its index.html for
// any path that is not a file (client-side routes). Vite names the files
// under /assets/ by content hash, so those may be cached for good; the
// index must be revalidated so a deploy takes effect.
func (s *Server) serveStatic(w http.ResponseWriter, r *http.Request) {
	root := http.Dir(s.cfg.StaticDir)
	if s.cfg.StaticDir == "" {
		s.noFrontend(w)
		return
	}
	name := path.Clean("/" + r.URL.Path)
	if f, err := root.Open(name); err == nil {
		st, err := f.Stat()
		if err == nil && st.Mode().IsRegular() {
			defer f.Close()
			if strings.HasPrefix(name, "/assets/") {
				w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
			}
			http.ServeContent(w, r, st.Name(), st.ModTime(), f)
			return
		}
		f.Close()
	}
	index, err := root.Open("/index.html")
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("router: cannot open frontend index", "dir", s.cfg.StaticDir, "err", err)
		}
		s.noFrontend(w)
		return
	}
	defer index.Close()
	st, err := index.Stat()
	if err != nil {
		s.noFrontend(w)
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "index.html", st.ModTime(), index)
}

// noFrontend explains, to a person in a browser, why there is no app here.
func (s *Server) noFrontend(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNotFound)
	dir := s.cfg.StaticDir
	if dir == "" {
		dir = "(not set)"
	}
	_, _ = w.Write([]byte(`<!doctype html><meta charset="utf-8"><title>Spaceport router</title>
<h1>Spaceport router is running, but has no frontend to serve</h1>
<p>No built frontend (index.html) was found in the static directory <code>` + html.EscapeString(dir) + `</code>.
Build the frontend (<code>npm run build</code> in <code>frontend/</code>) or point <code>STATIC_DIR</code> at a built one.</p>
<p>The API is up: <a href="/api/spaces">/api/spaces</a>, <a href="/api/machines">/api/machines</a>,
<a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>, <a href="/metrics">/metrics</a>.</p>
`))
}
