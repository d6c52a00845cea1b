package sensor

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"strconv"
	"syscall"
)

// maxHashBytes bounds the executables that are hashed: a bigger one gets no
// process.hash (hashing it would stall the reader).
const maxHashBytes = 32 << 20

// maxHashEntries bounds the digest cache.
const maxHashEntries = 4096

type fileKey struct {
	dev, ino   uint64
	mtimeNs    int64
	size       int64
	ctimeNanos int64
}

// hashCache digests executables through /proc/<pid>/exe, once per file
// version (device, inode, mtime, ctime, size). Not safe for concurrent use.
type hashCache struct {
	proc   string
	sums   map[fileKey]string
	buf    []byte
	hashed func() // metrics hook: one executable read and digested
}

func newHashCache(procRoot string) *hashCache {
	return &hashCache{proc: procRoot, sums: map[fileKey]string{}, buf: make([]byte, 256<<10)}
}

// sum is the sha256 of pid's executable, or "" when it cannot be read (the
// process is gone) or is bigger than maxHashBytes.
func (h *hashCache) sum(pid int) string {
	f, err := os.Open(h.proc + "/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return ""
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return ""
	}
	if st.Size > maxHashBytes || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return ""
	}
	k := fileKey{dev: st.Dev, ino: st.Ino, mtimeNs: st.Mtim.Nano(), size: st.Size, ctimeNanos: st.Ctim.Nano()}
	if s, ok := h.sums[k]; ok {
		return s
	}
	d := sha256.New()
	if _, err := io.CopyBuffer(d, io.LimitReader(f, maxHashBytes+1), h.buf); err != nil {
		return ""
	}
	if h.hashed != nil {
		h.hashed()
	}
	s := hex.EncodeToString(d.Sum(nil))
	if len(h.sums) >= maxHashEntries {
		clear(h.sums)
	}
	h.sums[k] = s
	return s
}
