package auth

import (
	"os"
	"sync"
	"time"
)

// stampSettle is how recently modified a file is read again even though
// its size, modification time and identity are as last read: a file
// system with coarse timestamps can give a quick rewrite the same ones.
const stampSettle = 2 * time.Second

// stamp remembers the size, modification time and identity of a policy
// file as last read, so that the watcher, polling four times a second,
// reads and hashes it only when it may have changed. A replaced file (a
// rename over it, a Kubernetes ConfigMap's symlink swap) has another
// identity and is read again.
type stamp struct {
	mu sync.Mutex
	fi os.FileInfo // nil: read it
}

// reread reads path, at most limit bytes, unless it is unchanged since
// the last record; then skip is true. fi, to be recorded once what was
// read is in force, is nil if path could not be stat'ed.
func (s *stamp) reread(path string, limit int64, now time.Time) (data []byte, fi os.FileInfo, skip bool, err error) {
	fi, _ = os.Stat(path) // an error is the read's to report
	s.mu.Lock()
	last := s.fi
	s.mu.Unlock()
	if fi != nil && last != nil && os.SameFile(fi, last) && fi.Size() == last.Size() &&
		fi.ModTime().Equal(last.ModTime()) && now.Sub(fi.ModTime()) > stampSettle {
		return nil, fi, true, nil
	}
	data, err = readBounded(path, limit)
	return data, fi, false, err
}

// record notes fi (from reread) as the file in force.
func (s *stamp) record(fi os.FileInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fi = fi
}
