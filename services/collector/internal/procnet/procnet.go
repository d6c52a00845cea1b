// Package procnet reads the kernel's socket tables, /proc/<pid>/net/{tcp,
// tcp6,udp,udp6}, of a network namespace. Every process in a namespace sees
// the same tables, so one pid per container is enough.
//
// The tables are text the kernel writes, but the collector reads them from
// containers an attacker may control (and from a /proc that may be mounted
// from elsewhere), so Parse accepts anything: malformed lines are skipped,
// the number of entries is bounded, and nothing panics.
package procnet

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
)

// Transport is the protocol of a table.
type Transport string

const (
	TCP Transport = "tcp"
	UDP Transport = "udp"
)

// State is a socket's state as the kernel numbers it (include/net/tcp_states.h).
// UDP sockets use Established (connected) and Close (bound, not connected).
type State uint8

const (
	Established State = 0x01
	SynSent     State = 0x02
	SynRecv     State = 0x03
	FinWait1    State = 0x04
	FinWait2    State = 0x05
	TimeWait    State = 0x06
	Close       State = 0x07
	CloseWait   State = 0x08
	LastAck     State = 0x09
	Listen      State = 0x0A
	Closing     State = 0x0B
)

// Socket is one row of a table.
type Socket struct {
	Transport Transport
	Local     netip.AddrPort
	Remote    netip.AddrPort
	State     State
	UID       int
	Inode     uint64
}

// IPv6 reports whether the socket is in a tcp6/udp6 table.
func (s Socket) IPv6() bool { return s.Local.Addr().Is6() }

// Table names one of the four files.
type Table struct {
	File      string // tcp, tcp6, udp, udp6
	Transport Transport
}

// Tables are the files Read reads.
var Tables = []Table{{"tcp", TCP}, {"tcp6", TCP}, {"udp", UDP}, {"udp6", UDP}}

// MaxLine bounds one line; a longer line is skipped. The kernel's lines are
// about 150 bytes.
const MaxLine = 512

// Read reads the four tables of pid's network namespace under procRoot
// (normally /proc), at most max sockets in all (0: no limit). A missing
// tcp6/udp6 (IPv6 disabled) is not an error. It reports whether sockets were
// left out because of max.
func Read(procRoot string, pid, max int) ([]Socket, bool, error) {
	var out []Socket
	var truncated bool
	for _, t := range Tables {
		f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "net", t.File))
		if err != nil {
			if os.IsNotExist(err) && t.File != "tcp" && t.File != "udp" {
				continue
			}
			return nil, false, fmt.Errorf("reading socket table: %w", err)
		}
		left := 0
		if max > 0 {
			left = max - len(out)
		}
		socks, cut, err := Parse(f, t.Transport, left)
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("reading %s of pid %d: %w", t.File, pid, err)
		}
		out = append(out, socks...)
		if cut {
			truncated = true
			break
		}
	}
	return out, truncated, nil
}

// Parse reads one table, at most max sockets (0: no limit), and reports
// whether it stopped because of max. Only I/O errors are returned: lines it
// cannot read are skipped.
func Parse(r io.Reader, transport Transport, max int) ([]Socket, bool, error) {
	br := bufio.NewReaderSize(r, 4096)
	var out []Socket
	first := true
	for {
		line, err := readLine(br)
		if len(line) > 0 && !first {
			if s, ok := parseLine(line, transport); ok {
				if max > 0 && len(out) >= max {
					return out, true, nil
				}
				out = append(out, s)
			}
		}
		first = false // the header
		if err == io.EOF {
			return out, false, nil
		}
		if err != nil {
			return out, false, err
		}
	}
}

// readLine returns the next line without its newline; a line longer than
// MaxLine is consumed and returned empty.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	long := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !long {
			if len(line)+len(chunk) > MaxLine+1 {
				long, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if long {
			line = nil
		}
		return bytes.TrimRight(line, "\r\n"), err
	}
}

// parseLine reads "sl local remote st tx:rx tr:when retrnsmt uid timeout inode ...".
func parseLine(line []byte, transport Transport) (Socket, bool) {
	f := bytes.Fields(line)
	if len(f) < 10 || len(f[0]) < 2 || f[0][len(f[0])-1] != ':' {
		return Socket{}, false
	}
	local, ok := parseAddrPort(f[1])
	if !ok {
		return Socket{}, false
	}
	remote, ok := parseAddrPort(f[2])
	if !ok || local.Addr().Is4() != remote.Addr().Is4() {
		return Socket{}, false
	}
	st, err := strconv.ParseUint(string(f[3]), 16, 8)
	if err != nil || st == 0 || st > uint64(Closing) {
		return Socket{}, false
	}
	uid, err := strconv.Atoi(string(f[7]))
	if err != nil || uid < 0 {
		uid = -1
	}
	inode, _ := strconv.ParseUint(string(f[9]), 10, 64)
	return Socket{Transport: transport, Local: local, Remote: remote, State: State(st), UID: uid, Inode: inode}, true
}

// parseAddrPort reads the kernel's "ADDR:PORT": the address as 4-byte words
// in hex, each printed in host byte order; the port in hex.
func parseAddrPort(b []byte) (netip.AddrPort, bool) {
	i := bytes.IndexByte(b, ':')
	if i < 0 || len(b)-i-1 != 4 {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(string(b[i+1:]), 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	hexAddr := b[:i]
	if len(hexAddr) != 8 && len(hexAddr) != 32 {
		return netip.AddrPort{}, false
	}
	raw := make([]byte, len(hexAddr)/2)
	if _, err := hex.Decode(raw, hexAddr); err != nil {
		return netip.AddrPort{}, false
	}
	for w := 0; w < len(raw); w += 4 { // each word: big-endian hex text of a host-order u32
		binary.NativeEndian.PutUint32(raw[w:], binary.BigEndian.Uint32(raw[w:]))
	}
	var addr netip.Addr
	if len(raw) == 4 {
		addr = netip.AddrFrom4([4]byte(raw))
	} else {
		addr = netip.AddrFrom16([16]byte(raw))
	}
	return netip.AddrPortFrom(addr, uint16(port)), true
}
