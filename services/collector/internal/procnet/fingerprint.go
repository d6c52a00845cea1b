package procnet

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Fingerprint summarises a network namespace's sockets from counters the
// kernel keeps per namespace and prints in constant time: sockets in use
// (all, TCP, TCP6, UDP, UDP6), TCP time-wait sockets, and the TCP MIB's
// ActiveOpens, PassiveOpens and CurrEstab (/proc/<pid>/net/sockstat,
// sockstat6, snmp). Reading the socket tables walks the kernel's whole hash
// tables, whatever the namespace holds; while the fingerprint stays the same,
// a new connection, a closed one, or a socket opened or closed alone would
// have changed it, so the tables need not be read. What it cannot see is one
// socket closed and another of the same kind opened within the same interval
// without a TCP open (a listener or a bound UDP socket replacing another):
// callers read the tables anyway now and then.
func Fingerprint(procRoot string, pid int) (string, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid), "net")
	var b strings.Builder
	for _, f := range []struct {
		name     string
		optional bool
		keep     map[string][]string // line prefix -> fields to keep
	}{
		{"sockstat", false, map[string][]string{"sockets:": {"used"}, "TCP:": {"inuse", "tw"}, "UDP:": {"inuse"}}},
		{"sockstat6", true, map[string][]string{"TCP6:": {"inuse"}, "UDP6:": {"inuse"}}},
	} {
		data, err := readSmall(filepath.Join(dir, f.name))
		if err != nil {
			if f.optional && os.IsNotExist(err) {
				continue
			}
			return "", fmt.Errorf("reading %s: %w", f.name, err)
		}
		for _, line := range bytes.Split(data, []byte("\n")) {
			fields := strings.Fields(string(line))
			if len(fields) == 0 {
				continue
			}
			keep, ok := f.keep[fields[0]]
			if !ok {
				continue
			}
			for i := 1; i+1 < len(fields); i += 2 {
				for _, k := range keep {
					if fields[i] == k {
						b.WriteString(fields[0] + k + "=" + fields[i+1] + " ")
					}
				}
			}
		}
	}
	data, err := readSmall(filepath.Join(dir, "snmp"))
	if err != nil {
		return "", fmt.Errorf("reading snmp: %w", err)
	}
	var header []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "Tcp:" {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		for i := 1; i < len(fields) && i < len(header); i++ {
			switch header[i] {
			case "ActiveOpens", "PassiveOpens", "CurrEstab":
				b.WriteString(header[i] + "=" + fields[i] + " ")
			}
		}
		break
	}
	return b.String(), nil
}

// readSmall reads at most 64 KiB of a /proc file.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<10))
}
