package flylocal

import (
	"net/http"
)

// Fault makes calls of one Machines API endpoint fail, as Fly's API sometimes does (no capacity in a region,
// the rate limit, an answer lost on the way), so that a test can watch what its caller does then.
type Fault struct {
	// Endpoint is the call that fails, by the name the client gives its rate-limit classes: "create", "wait",
	// "start", "stop", "delete", "get", "list", "metadata", ... Required.
	Endpoint string
	// Status is the HTTP status of the error answer. Zero means 500.
	Status int
	// FlyStatus is put in the error body's "status", as Fly's machine-readable reason, such as
	// "insufficient_capacity". Empty sends none.
	FlyStatus string
	// AfterDoing carries the call out and only then answers the error: a lost answer, after which the caller
	// does not know that, say, a machine was created. False fails the call without doing anything.
	AfterDoing bool
	// Times is how many calls fail. Zero means one.
	Times int
}

// InjectFault makes the next calls of f.Endpoint fail as f says. Faults of one endpoint are used in the order
// injected.
func (a *MachinesAPI) InjectFault(f Fault) {
	if f.Status == 0 {
		f.Status = http.StatusInternalServerError
	}
	if f.Times <= 0 {
		f.Times = 1
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.faults = append(a.faults, f)
}

// takeFault consumes one call of the first fault injected for endpoint, if any.
func (a *MachinesAPI) takeFault(endpoint string) (Fault, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range a.faults {
		f := &a.faults[i]
		if f.Endpoint != endpoint {
			continue
		}
		out := *f
		if f.Times--; f.Times == 0 {
			a.faults = append(a.faults[:i], a.faults[i+1:]...)
		}
		return out, true
	}
	return Fault{}, false
}

// faulty wraps the handler of endpoint so that injected faults apply to it.
func (a *MachinesAPI) faulty(endpoint string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f, ok := a.takeFault(endpoint)
		if !ok {
			h(w, r)
			return
		}
		if f.AfterDoing {
			h(discardWriter{header: http.Header{}}, r)
		}
		a.logger.Info("machines API: injected fault", "endpoint", endpoint, "status", f.Status, "after_doing", f.AfterDoing)
		body := map[string]string{"error": "flylocal: injected fault on " + endpoint}
		if f.FlyStatus != "" {
			body["status"] = f.FlyStatus
		}
		writeAPIJSON(w, f.Status, body)
	}
}

// discardWriter is the ResponseWriter of a call whose answer is lost.
type discardWriter struct{ header http.Header }

func (d discardWriter) Header() http.Header         { return d.header }
func (d discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d discardWriter) WriteHeader(int)             {}
