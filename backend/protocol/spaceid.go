package protocol

// MaxSpaceIDLen is the longest space ID the protocol allows (PROTOCOL.md §1).
const MaxSpaceIDLen = 64

// ValidSpaceID reports whether id is 1 to 64 characters of [A-Za-z0-9_-].
// Everything that routes or stores a space checks it first, so no other
// string ever reaches a path, a log key or a query.
func ValidSpaceID(id string) bool {
	if len(id) == 0 || len(id) > MaxSpaceIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
