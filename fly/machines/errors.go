package machines

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Errors an *APIError matches with errors.Is, by the status code of the answer (or, for the last two, by Fly's
// "status" field).
var (
	ErrBadRequest           = errors.New("bad request")                   // 400
	ErrUnauthorized         = errors.New("unauthorized")                  // 401: a missing or wrong FLY_API_TOKEN
	ErrNotFound             = errors.New("not found")                     // 404
	ErrWaitTimeout          = errors.New("timed out waiting for a state") // 408, from wait
	ErrConflict             = errors.New("conflict")                      // 409: a lease held by someone else
	ErrPreconditionFailed   = errors.New("precondition failed")           // 412: the machine is in the wrong state
	ErrUnprocessable        = errors.New("unprocessable request")         // 422
	ErrRateLimited          = errors.New("rate limited")                  // 429
	ErrInsufficientCapacity = errors.New("insufficient capacity")         // status "insufficient_capacity"
	ErrNameTaken            = errors.New("name taken")                    // status "name_taken"
)

var statusErrors = map[int]error{
	http.StatusBadRequest:          ErrBadRequest,
	http.StatusUnauthorized:        ErrUnauthorized,
	http.StatusNotFound:            ErrNotFound,
	http.StatusRequestTimeout:      ErrWaitTimeout,
	http.StatusConflict:            ErrConflict,
	http.StatusPreconditionFailed:  ErrPreconditionFailed,
	http.StatusUnprocessableEntity: ErrUnprocessable,
	http.StatusTooManyRequests:     ErrRateLimited,
}

// APIError is an answer of the API other than 2xx. Fly's error body is {"error": "...", "status": "..."}; the
// message is also read from a "message" field, or is the body's text, as fly-go does.
type APIError struct {
	// Op is the call, such as "stop machine 9080167ab10038 of app spaceport-backend".
	Op string
	// StatusCode is the HTTP status.
	StatusCode int
	// Message is the API's explanation.
	Message string
	// Status is Fly's machine-readable reason ("insufficient_capacity", "name_taken", "unknown"), if any.
	Status string
	// RequestID is the fly-request-id of the answer, for Fly's support.
	RequestID string
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d %s", e.Op, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.StatusCode == http.StatusUnauthorized {
		b.WriteString(" (set " + TokenEnv + " to a token for this app, such as `fly tokens create deploy`)")
	}
	if e.RequestID != "" {
		b.WriteString(" (fly-request-id " + e.RequestID + ")")
	}
	return b.String()
}

// Is matches the sentinel error of the status code or of Fly's status field.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrInsufficientCapacity:
		return e.Status == "insufficient_capacity"
	case ErrNameTaken:
		return e.Status == "name_taken"
	}
	return statusErrors[e.StatusCode] == target && target != nil
}

// maxErrorText bounds the body text kept in a message when the body is not JSON.
const maxErrorText = 512

func readError(op string, resp *response) *APIError {
	e := &APIError{Op: op, StatusCode: resp.StatusCode, RequestID: resp.Header.Get("fly-request-id")}
	var body struct {
		Error   string `json:"error"`
		Message string `json:"message"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(resp.Body, &body); err == nil {
		e.Message, e.Status = body.Error, body.Status
		if e.Message == "" {
			e.Message = body.Message
		}
	}
	if e.Message == "" {
		text := strings.TrimSpace(string(resp.Body))
		if len(text) > maxErrorText {
			text = text[:maxErrorText] + "..."
		}
		e.Message = text
	}
	return e
}
