package syncclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Pokes are most of what a client reads, and a load generator runs
// thousands of clients next to the server it measures, so pokes get a
// decoder of their own: one pass, no reflection. It checks the JSON as
// strictly as encoding/json does; on anything it does not expect it gives
// up and the frame goes through encoding/json, so both always agree (see
// FuzzDecodePoke).

var pokePrefix = []byte(`{"type":"poke",`)

var errSlow = errors.New("not for the fast path")

// decodePokeFast decodes a `poke` frame as the server writes it. ok is false
// when the frame must go through encoding/json instead.
func decodePokeFast(data []byte) (base json.RawMessage, body *pullResponse, ok bool) {
	if !bytes.HasPrefix(data, pokePrefix) {
		return nil, nil, false
	}
	d := pokeDecoder{b: data, i: len(pokePrefix)}
	base, body, err := d.frame()
	if err != nil {
		return nil, nil, false
	}
	return base, body, true
}

type pokeDecoder struct {
	b []byte
	i int
}

func (d *pokeDecoder) peek() byte {
	for d.i < len(d.b) {
		switch c := d.b[d.i]; c {
		case ' ', '\t', '\r', '\n':
			d.i++
		default:
			return c
		}
	}
	return 0
}

func (d *pokeDecoder) expect(c byte) error {
	if d.peek() != c {
		return errSlow
	}
	d.i++
	return nil
}

// nextKey reads the next member's key and its colon. state is 0 right after
// '{', 1 after a member, 2 right after a ',' (the frame's prefix ends with
// one). more is false at the closing '}'.
func (d *pokeDecoder) nextKey(state int) (key []byte, escaped, more bool, err error) {
	switch state {
	case 0:
		if d.peek() == '}' {
			d.i++
			return nil, false, false, nil
		}
	case 1:
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return nil, false, false, nil
		default:
			return nil, false, false, errSlow
		}
	}
	if d.peek() != '"' {
		return nil, false, false, errSlow
	}
	start := d.i
	end, escaped, err := d.scanString()
	if err != nil {
		return nil, false, false, err
	}
	if err := d.expect(':'); err != nil {
		return nil, false, false, err
	}
	return d.b[start+1 : end-1], escaped, true, nil
}

// field tells which of fields key is. Keys that encoding/json would match by
// case folding or through an escape, and fields seen twice, are errSlow:
// encoding/json decides those. -1 is an unknown key.
func field(key []byte, escaped bool, seen *uint8, fields ...string) (int, error) {
	if escaped {
		return 0, errSlow
	}
	for i, f := range fields {
		if string(key) == f {
			if *seen&(1<<i) != 0 {
				return 0, errSlow
			}
			*seen |= 1 << i
			return i, nil
		}
		if len(key) == len(f) && strings.EqualFold(string(key), f) {
			return 0, errSlow
		}
	}
	return -1, nil
}

func (d *pokeDecoder) frame() (base json.RawMessage, body *pullResponse, err error) {
	seen := uint8(1) // "type" came in the prefix
	for state := 2; ; state = 1 {
		key, esc, more, err := d.nextKey(state)
		if err != nil {
			return nil, nil, err
		}
		if !more {
			break
		}
		f, err := field(key, esc, &seen, "type", "id", "baseCookie", "body")
		if err != nil {
			return nil, nil, err
		}
		switch {
		case f == 2:
			v, err := d.value()
			if err != nil {
				return nil, nil, err
			}
			base = bytes.Clone(v)
		case f == 3 && d.peek() == 'n':
			if _, err := d.value(); err != nil {
				return nil, nil, err
			}
		case f == 3:
			if body, err = d.body(); err != nil {
				return nil, nil, err
			}
		default:
			if _, err := d.value(); err != nil {
				return nil, nil, err
			}
		}
	}
	if d.peek(); d.i != len(d.b) {
		return nil, nil, errSlow // trailing data
	}
	return base, body, nil
}

func (d *pokeDecoder) body() (*pullResponse, error) {
	if err := d.expect('{'); err != nil {
		return nil, err
	}
	r := &pullResponse{}
	seen := uint8(0)
	for state := 0; ; state = 1 {
		key, esc, more, err := d.nextKey(state)
		if err != nil {
			return nil, err
		}
		if !more {
			return r, nil
		}
		f, err := field(key, esc, &seen, "cookie", "error", "lastMutationIDChanges", "patch")
		if err != nil {
			return nil, err
		}
		switch f {
		case 0:
			v, err := d.value()
			if err != nil {
				return nil, err
			}
			r.Cookie = bytes.Clone(v)
		case 1:
			if r.Error, err = d.str(); err != nil {
				return nil, err
			}
		case 2:
			err = d.lmids(r)
		case 3:
			err = d.patch(r)
		default:
			_, err = d.value()
		}
		if err != nil {
			return nil, err
		}
	}
}

func (d *pokeDecoder) lmids(r *pullResponse) error {
	if err := d.expect('{'); err != nil {
		return err
	}
	r.LMIDs = map[string]int64{}
	for state := 0; ; state = 1 {
		key, esc, more, err := d.nextKey(state)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		if esc || !utf8.Valid(key) {
			return errSlow
		}
		v, err := d.value()
		if err != nil {
			return err
		}
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return errSlow // not an integer: encoding/json says why
		}
		r.LMIDs[string(key)] = n
	}
}

func (d *pokeDecoder) patch(r *pullResponse) error {
	if err := d.expect('['); err != nil {
		return err
	}
	// Most of a poke is its patch: size it once (the count may include
	// look-alikes inside values; it is only a capacity).
	r.Patch = make([]PatchOp, 0, bytes.Count(d.b[d.i:], []byte(`{"op"`)))
	if d.peek() == ']' {
		d.i++
		return nil
	}
	for {
		if err := d.expect('{'); err != nil {
			return err
		}
		var op PatchOp
		seen := uint8(0)
		for state := 0; ; state = 1 {
			key, esc, more, err := d.nextKey(state)
			if err != nil {
				return err
			}
			if !more {
				break
			}
			f, err := field(key, esc, &seen, "op", "key", "value")
			if err != nil {
				return err
			}
			switch f {
			case 0:
				op.Op, err = d.str()
			case 1:
				op.Key, err = d.str()
			case 2:
				var v []byte
				v, err = d.value()
				op.Value = bytes.Clone(v)
			default:
				_, err = d.value()
			}
			if err != nil {
				return err
			}
		}
		r.Patch = append(r.Patch, op)
		switch d.peek() {
		case ',':
			d.i++
		case ']':
			d.i++
			return nil
		default:
			return errSlow
		}
	}
}

// str reads a JSON string that holds no escape and is valid UTF-8 (what
// the server writes for keys and op names); anything else is errSlow.
func (d *pokeDecoder) str() (string, error) {
	if d.peek() != '"' {
		return "", errSlow
	}
	start := d.i
	end, escaped, err := d.scanString()
	if err != nil {
		return "", err
	}
	raw := d.b[start+1 : end-1]
	if escaped || !utf8.Valid(raw) {
		return "", errSlow
	}
	return string(raw), nil
}

// scanString moves past the string at d.i, checking its escapes, and
// returns its end.
func (d *pokeDecoder) scanString() (end int, escaped bool, err error) {
	b := d.b
	i := d.i + 1
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			d.i = i + 1
			return d.i, escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(b) {
				return 0, false, errSlow
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return 0, false, errSlow
				}
				for _, h := range b[i+2 : i+6] {
					if !isHex(h) {
						return 0, false, errSlow
					}
				}
				i += 6
			default:
				return 0, false, errSlow
			}
		case c < 0x20:
			return 0, false, errSlow
		default:
			i++
		}
	}
	return 0, false, errSlow
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// value moves past one JSON value, checking its syntax, and returns its
// bytes.
func (d *pokeDecoder) value() ([]byte, error) {
	c := d.peek()
	start := d.i
	switch {
	case c == '"':
		if _, _, err := d.scanString(); err != nil {
			return nil, err
		}
	case c == '{':
		d.i++
		for state := 0; ; state = 1 {
			_, _, more, err := d.nextKey(state)
			if err != nil {
				return nil, err
			}
			if !more {
				break
			}
			if _, err := d.value(); err != nil {
				return nil, err
			}
		}
	case c == '[':
		d.i++
		if d.peek() == ']' {
			d.i++
			break
		}
		for {
			if _, err := d.value(); err != nil {
				return nil, err
			}
			if d.peek() == ',' {
				d.i++
				continue
			}
			if err := d.expect(']'); err != nil {
				return nil, err
			}
			break
		}
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		if err := d.number(); err != nil {
			return nil, err
		}
	default:
		return nil, errSlow
	}
	return d.b[start:d.i], nil
}

func (d *pokeDecoder) literal(lit string) ([]byte, error) {
	if !bytes.HasPrefix(d.b[d.i:], []byte(lit)) {
		return nil, errSlow
	}
	start := d.i
	d.i += len(lit)
	return d.b[start:d.i], nil
}

// number checks JSON's number grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *pokeDecoder) number() error {
	b, i := d.b, d.i
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return errSlow
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return errSlow
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return errSlow
		}
	}
	d.i = i
	return nil
}
