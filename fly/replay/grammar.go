package replay

import (
	"errors"
	"fmt"
	"strings"
)

// errUnknownKey tells parse that a key is not one of the header's fields; parse ignores such pairs.
var errUnknownKey = errors.New("unknown key")

// parse splits v into key=value pairs (see the package documentation for the grammar) and calls set for each
// with the key in lower case and the value unquoted. Pairs with an empty value are skipped. A known key may occur
// once; set returns errUnknownKey for keys it does not know, which are skipped.
func parse(v string, set func(key, val string) error) error {
	seen := make(map[string]bool, 8)
	i := 0
	for {
		i = skipOWS(v, i)
		if i == len(v) {
			return nil
		}
		if v[i] == ';' {
			i++
			continue
		}
		start := i
		for i < len(v) && isTchar(v[i]) {
			i++
		}
		if start == i {
			return fmt.Errorf("%w: expected a key at offset %d", ErrMalformed, i)
		}
		key := strings.ToLower(v[start:i])
		i = skipOWS(v, i)
		if i == len(v) || v[i] != '=' {
			return fmt.Errorf("%w: key %q has no value", ErrMalformed, key)
		}
		i = skipOWS(v, i+1)

		var val string
		if i < len(v) && v[i] == '"' {
			var err error
			val, i, err = unquote(v, i)
			if err != nil {
				return err
			}
			i = skipOWS(v, i)
			if i < len(v) && v[i] != ';' {
				return fmt.Errorf("%w: text after the quoted value of %q", ErrMalformed, key)
			}
		} else {
			start := i
			for ; i < len(v) && v[i] != ';'; i++ {
				if v[i] == '"' {
					return fmt.Errorf("%w: quote inside the bare value of %q", ErrMalformed, key)
				}
				if isCTL(v[i]) {
					return fmt.Errorf("%w: control character in the value of %q", ErrMalformed, key)
				}
			}
			val = strings.TrimRight(v[start:i], " \t")
		}

		if val == "" {
			continue
		}
		err := set(key, val)
		if errors.Is(err, errUnknownKey) {
			continue
		}
		if err != nil {
			return err
		}
		if seen[key] {
			return fmt.Errorf("%w: key %q given twice", ErrMalformed, key)
		}
		seen[key] = true
	}
}

// unquote reads the quoted string that starts at v[i] == '"'. It returns the value and the offset after the
// closing quote.
func unquote(v string, i int) (string, int, error) {
	i++ // opening quote
	start := i
	var b *strings.Builder // allocated only when the value holds an escape
	for i < len(v) {
		c := v[i]
		switch {
		case c == '"':
			if b == nil {
				return v[start:i], i + 1, nil
			}
			return b.String(), i + 1, nil
		case c == '\\':
			if i+1 == len(v) {
				return "", 0, fmt.Errorf("%w: unterminated quoted value", ErrMalformed)
			}
			if b == nil {
				b = new(strings.Builder)
				b.WriteString(v[start:i])
			}
			if isCTL(v[i+1]) {
				return "", 0, fmt.Errorf("%w: control character in a quoted value", ErrMalformed)
			}
			b.WriteByte(v[i+1])
			i += 2
		case isCTL(c):
			return "", 0, fmt.Errorf("%w: control character in a quoted value", ErrMalformed)
		default:
			if b != nil {
				b.WriteByte(c)
			}
			i++
		}
	}
	return "", 0, fmt.Errorf("%w: unterminated quoted value", ErrMalformed)
}

// writer builds a header value from fields in the order they are added.
type writer struct {
	b []byte
}

// field appends key=value, leaving out fields with an empty value.
func (w *writer) field(key, val string) {
	if val == "" {
		return
	}
	if len(w.b) > 0 {
		w.b = append(w.b, ';')
	}
	w.b = append(w.b, key...)
	w.b = append(w.b, '=')
	if isToken(val) {
		w.b = append(w.b, val...)
		return
	}
	w.b = append(w.b, '"')
	for i := 0; i < len(val); i++ {
		if c := val[i]; c == '"' || c == '\\' {
			w.b = append(w.b, '\\')
		}
		w.b = append(w.b, val[i])
	}
	w.b = append(w.b, '"')
}

func (w *writer) String() string { return string(w.b) }

func skipOWS(v string, i int) int {
	for i < len(v) && (v[i] == ' ' || v[i] == '\t') {
		i++
	}
	return i
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return s != ""
}

// isTchar reports whether c is a token character (RFC 9110 §5.6.2).
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isCTL reports whether c is a control character that HTTP forbids in a field value (tab is allowed).
func isCTL(c byte) bool {
	return c < 0x20 && c != '\t' || c == 0x7f
}

func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if isCTL(s[i]) {
			return true
		}
	}
	return false
}
