package flylocal

import (
	"bytes"
	"io"
	"sync"
)

// maxLineLength is the longest line lineWriter holds back waiting for its newline; a longer one is written in
// pieces.
const maxLineLength = 64 << 10

// lineWriter writes each line written to it to out with a prefix. Lines from several lineWriters sharing mu do
// not interleave. os/exec calls Write from one goroutine per stream.
type lineWriter struct {
	out    io.Writer
	mu     *sync.Mutex
	prefix string
	buf    []byte // an incomplete last line
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			if len(w.buf) >= maxLineLength {
				w.flush()
			}
			break
		}
		w.buf = append(w.buf, p[:i]...)
		w.flush()
		p = p[i+1:]
	}
	return n, nil
}

// flush writes the held line, if any, ending it with a newline.
func (w *lineWriter) flush() {
	if len(w.buf) == 0 {
		return
	}
	line := make([]byte, 0, len(w.prefix)+len(w.buf)+1)
	line = append(append(append(line, w.prefix...), w.buf...), '\n')
	w.buf = w.buf[:0]
	w.mu.Lock()
	defer w.mu.Unlock()
	_, _ = w.out.Write(line) // a machine's output is best effort; a broken terminal must not stop the machine
}
