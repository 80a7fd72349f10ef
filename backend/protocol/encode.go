package protocol

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Welcome is the first server frame of a session.
type Welcome struct {
	Type      string `json:"type"`
	SpaceID   string `json:"spaceID"`
	MachineID string `json:"machineID"`
	Region    string `json:"region"`
	Protocol  int    `json:"protocol"`
}

// ErrorResponse is a Replicache ClientStateNotFound or VersionNotSupported
// body, sent in place of a pull response or as a push response.
type ErrorResponse struct {
	Error       string `json:"error"`
	VersionType string `json:"versionType,omitempty"`
}

// Replicache error responses.
var (
	ClientStateNotFound = &ErrorResponse{Error: "ClientStateNotFound"}
)

// VersionNotSupported is Replicache's VersionNotSupported response for
// versionType "push", "pull" or "schema".
func VersionNotSupported(versionType string) *ErrorResponse {
	return &ErrorResponse{Error: "VersionNotSupported", VersionType: versionType}
}

// Pushed acknowledges a push.
type Pushed struct {
	Type     string         `json:"type"`
	ID       string         `json:"id"`
	Response *ErrorResponse `json:"response,omitempty"`
}

// ErrorFrame reports a failed request.
type ErrorFrame struct {
	Type      string `json:"type"`
	ID        string `json:"id,omitempty"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

// EncodeWelcome encodes a `welcome` frame.
func EncodeWelcome(spaceID, machineID, region string) []byte {
	return mustMarshal(Welcome{Type: TypeWelcome, SpaceID: spaceID, MachineID: machineID, Region: region, Protocol: Version})
}

// EncodePushed encodes a `pushed` frame; resp is nil for success.
func EncodePushed(id string, resp *ErrorResponse) []byte {
	return mustMarshal(Pushed{Type: TypePushed, ID: id, Response: resp})
}

// EncodeError encodes an `error` frame.
func EncodeError(id, code, message string, retryable bool) []byte {
	return mustMarshal(ErrorFrame{Type: TypeError, ID: id, Code: code, Message: message, Retryable: retryable})
}

// EncodePong encodes a `pong` frame.
func EncodePong() []byte { return []byte(`{"type":"pong"}`) }

// EncodePulledError encodes a `pulled` frame whose body is an error response.
func EncodePulledError(id string, resp *ErrorResponse) []byte {
	return mustMarshal(struct {
		Type string         `json:"type"`
		ID   string         `json:"id"`
		Body *ErrorResponse `json:"body"`
	}{TypePulled, id, resp})
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only fixed struct types of this package reach here.
		panic("protocol: marshal " + err.Error())
	}
	return b
}

// AppendString appends s as a JSON string. Invalid UTF-8 is replaced, as
// encoding/json does, so the output is always valid JSON.
func AppendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript eval; escape
		// them as encoding/json does.
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// PatchPut appends a put operation (with a leading comma unless first).
func PatchPut(dst []byte, first bool, key string, value json.RawMessage) []byte {
	if !first {
		dst = append(dst, ',')
	}
	dst = append(dst, `{"op":"put","key":`...)
	dst = AppendString(dst, key)
	dst = append(dst, `,"value":`...)
	dst = append(dst, value...)
	return append(dst, '}')
}

// PatchDel appends a del operation (with a leading comma unless first).
func PatchDel(dst []byte, first bool, key string) []byte {
	if !first {
		dst = append(dst, ',')
	}
	dst = append(dst, `{"op":"del","key":`...)
	dst = AppendString(dst, key)
	return append(dst, '}')
}

// PatchClear appends a clear operation (with a leading comma unless first).
func PatchClear(dst []byte, first bool) []byte {
	if !first {
		dst = append(dst, ',')
	}
	return append(dst, `{"op":"clear"}`...)
}

// LMIDChange is one entry of lastMutationIDChanges.
type LMIDChange struct {
	ClientID string
	LMID     int64
}

// AppendPullResponse appends a PullResponseOKV1 object whose patch operations
// are already encoded (comma-separated, without brackets).
func AppendPullResponse(dst []byte, cookie int64, lmids []LMIDChange, patch []byte) []byte {
	dst = append(dst, `{"cookie":`...)
	dst = strconv.AppendInt(dst, cookie, 10)
	dst = append(dst, `,"lastMutationIDChanges":{`...)
	for i, c := range lmids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendString(dst, c.ClientID)
		dst = append(dst, ':')
		dst = strconv.AppendInt(dst, c.LMID, 10)
	}
	dst = append(dst, `},"patch":[`...)
	dst = append(dst, patch...)
	return append(dst, "]}"...)
}

// AppendPoke appends a whole `poke` frame.
func AppendPoke(dst []byte, base json.RawMessage, cookie int64, lmids []LMIDChange, patch []byte) []byte {
	dst = append(dst, `{"type":"poke","baseCookie":`...)
	dst = append(dst, base...)
	dst = append(dst, `,"body":`...)
	dst = AppendPullResponse(dst, cookie, lmids, patch)
	return append(dst, '}')
}

// AppendPulled appends a whole `pulled` frame with an OK body.
func AppendPulled(dst []byte, id string, cookie int64, lmids []LMIDChange, patch []byte) []byte {
	dst = append(dst, `{"type":"pulled","id":`...)
	dst = AppendString(dst, id)
	dst = append(dst, `,"body":`...)
	dst = AppendPullResponse(dst, cookie, lmids, patch)
	return append(dst, '}')
}

// AppendPokeRefusal appends a `poke` frame whose body is a refusal
// (ClientStateNotFound or VersionNotSupported) instead of state.
func AppendPokeRefusal(dst []byte, base json.RawMessage, resp *ErrorResponse) []byte {
	dst = append(dst, `{"type":"poke","baseCookie":`...)
	dst = append(dst, base...)
	dst = append(dst, `,"body":`...)
	dst = append(dst, mustMarshal(resp)...)
	return append(dst, '}')
}
