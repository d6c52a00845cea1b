// Package cgroupstats reads a container's resource counters straight from
// the host's cgroup files (v1 or v2) and its network counters from
// /proc/<pid>/net/dev, the numbers the Docker engine's stats API serves,
// without asking the engine.
//
// Every file read is small and kernel-generated, but the parsers accept any
// bytes without panicking (a test host's tree, or a future kernel, may
// differ): unknown lines are skipped, a missing or malformed counter is an
// error for a required counter and zero for an optional one.
package cgroupstats

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
)

// Version is a cgroup hierarchy layout.
type Version int

const (
	// V1 is the legacy layout: one hierarchy per controller
	// (<root>/cpuacct/..., <root>/memory/...).
	V1 Version = 1
	// V2 is the unified layout: one hierarchy (<root>/<path>/cpu.stat, ...).
	V2 Version = 2
)

func (v Version) String() string { return "v" + strconv.Itoa(int(v)) }

// Sample is one reading of a container's counters, in the units of the
// engine's stats API.
type Sample struct {
	CPUUsageNanos uint64  // cumulative CPU time of the cgroup
	CPULimitCores float64 // CFS quota / period; 0 when unlimited
	MemoryUsage   uint64  // including page cache
	InactiveFile  uint64  // the inactive page cache, which docker stats subtracts
	MemoryLimit   uint64  // 0 when unlimited
	PIDs          uint64
	ReadBytes     uint64 // block I/O, all devices
	WriteBytes    uint64
	Net           NetCounters
}

// NetCounters are a network namespace's counters summed over every
// interface except lo.
type NetCounters struct {
	RxBytes, TxBytes, RxPackets, TxPackets uint64
}

// Reader finds and reads containers' cgroups under a host's cgroup mount.
type Reader struct {
	procRoot   string
	cgroupRoot string
	version    Version
	// held counts the descriptors located containers hold, at most
	// maxHeld (half the process's descriptor limit): past it a counter is
	// opened at each read, so that resource samples never take the
	// descriptors log files, sockets and NATS need.
	held    atomic.Int64
	maxHeld int64
}

// New is a Reader of the cgroup hierarchy mounted at cgroupRoot (usually
// /sys/fs/cgroup) for processes under procRoot (usually /proc). The layout
// is v2 when cgroupRoot holds cgroup.controllers, v1 when it holds a
// cpuacct hierarchy; otherwise New fails (no cgroup mount there, or one it
// cannot read).
func New(procRoot, cgroupRoot string) (*Reader, error) {
	r := &Reader{procRoot: procRoot, cgroupRoot: cgroupRoot}
	switch {
	case exists(filepath.Join(cgroupRoot, "cgroup.controllers")):
		r.version = V2
	case exists(filepath.Join(cgroupRoot, "cpuacct")):
		r.version = V1
	default:
		return nil, fmt.Errorf("no cgroup v1 or v2 hierarchy at %s", cgroupRoot)
	}
	r.maxHeld = descriptorLimit() / 2
	return r, nil
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// Version is the layout New found.
func (r *Reader) Version() Version { return r.version }

// Container is a located container: the files its samples read, held
// open until Close. Read of one Container must not run concurrently.
type Container struct {
	r  *Reader
	v2 bool
	// Required: a sample without them fails.
	cpuUsage, memUsage *counter
	// Optional: zero when absent (nil) or unreadable.
	memStat, memLimit, cpuQuota, cpuPeriod, cpuMax, pids, io *counter
	netDev                                                   *counter // nil: shares the host's network namespace, no counters of its own
	buf                                                      []byte
}

// Close releases the container's files.
func (c *Container) Close() error {
	for _, f := range c.counters() {
		if f != nil && f.close() {
			c.r.held.Add(-1)
		}
	}
	return nil
}

func (c *Container) counters() []*counter {
	return []*counter{c.cpuUsage, c.memUsage, c.memStat, c.memLimit, c.cpuQuota, c.cpuPeriod, c.cpuMax, c.pids, c.io, c.netDev}
}

// maxCounterFile bounds one file a sample reads; the longest real one
// (v1 memory.stat, or net/dev of a namespace with many interfaces) is a
// few KiB.
const maxCounterFile = 1 << 20

var errCounterTooLong = errors.New("longer than 1 MiB")

// Locate finds the cgroup of the container whose first process is pid from
// /proc/<pid>/cgroup, opens the files its samples read, and reads them once.
// The cgroup path must contain containerID (Docker's cgroupfs /docker/<id>
// and systemd docker-<id>.scope both do): this guards against a reused pid
// and against a pid of another host (a remote engine). The caller closes the
// Container.
func (r *Reader) Locate(pid int, containerID string) (*Container, error) {
	if pid <= 0 {
		return nil, errors.New("no init pid")
	}
	if containerID == "" {
		return nil, errors.New("no container id")
	}
	proc := filepath.Join(r.procRoot, strconv.Itoa(pid))
	data, err := os.ReadFile(filepath.Join(proc, "cgroup"))
	if err != nil {
		return nil, err
	}
	paths := ParseProcCgroup(data)
	dir := func(controller string) (string, error) {
		p, ok := paths[controller]
		if !ok {
			return "", fmt.Errorf("pid %d: no %q cgroup", pid, controller)
		}
		if strings.Contains(p, "..") { // a path outside our cgroup namespace
			return "", fmt.Errorf("pid %d: cgroup %q is outside this cgroup namespace", pid, p)
		}
		if !strings.Contains(p, containerID) {
			return "", fmt.Errorf("pid %d: cgroup %q is not container %s's", pid, p, containerID)
		}
		return filepath.Clean("/" + p), nil
	}
	type file struct {
		dir, name string
		required  bool
	}
	var files []file
	blkio := "" // v1
	if r.version == V2 {
		d, err := dir("")
		if err != nil {
			return nil, err
		}
		d = filepath.Join(r.cgroupRoot, d)
		files = []file{
			{d, "cpu.stat", true}, {d, "memory.current", true}, {d, "memory.stat", false},
			{d, "memory.max", false}, {d, "cpu.max", false}, {d, "pids.current", false}, {d, "io.stat", false},
		}
	} else {
		dirs := map[string]string{}
		for _, ctrl := range []string{"cpuacct", "cpu", "memory", "pids", "blkio"} {
			d, err := dir(ctrl)
			if err != nil {
				return nil, err
			}
			// A controller co-mounted with others (cpu,cpuacct) lives in
			// <root>/cpu,cpuacct, with symlinks cpu and cpuacct to it.
			dirs[ctrl] = filepath.Join(r.cgroupRoot, ctrl, d)
		}
		blkio = dirs["blkio"]
		files = []file{
			{dirs["cpuacct"], "cpuacct.usage", true}, {dirs["memory"], "memory.usage_in_bytes", true},
			{dirs["memory"], "memory.stat", false}, {dirs["memory"], "memory.limit_in_bytes", false},
			{dirs["cpu"], "cpu.cfs_quota_us", false}, {dirs["cpu"], "cpu.cfs_period_us", false},
			{dirs["pids"], "pids.current", false},
			// The recursive file includes child cgroups, as docker stats reports.
			{dirs["blkio"], "blkio.throttle.io_service_bytes_recursive", false},
		}
	}
	c := &Container{r: r, v2: r.version == V2, buf: make([]byte, 4<<10)}
	dst := map[string]**counter{
		"cpu.stat": &c.cpuUsage, "memory.current": &c.memUsage, "memory.stat": &c.memStat, "memory.max": &c.memLimit,
		"cpu.max": &c.cpuMax, "pids.current": &c.pids, "io.stat": &c.io,
		"cpuacct.usage": &c.cpuUsage, "memory.usage_in_bytes": &c.memUsage, "memory.limit_in_bytes": &c.memLimit,
		"cpu.cfs_quota_us": &c.cpuQuota, "cpu.cfs_period_us": &c.cpuPeriod,
		"blkio.throttle.io_service_bytes_recursive": &c.io,
	}
	fail := func(err error) (*Container, error) {
		c.Close()
		return nil, err
	}
	for _, f := range files {
		path := filepath.Join(f.dir, f.name)
		h, err := r.openCounter(path)
		if err == nil && h == nil && f.required {
			err = fmt.Errorf("%s: %w", path, fs.ErrNotExist)
		}
		if err != nil {
			return fail(fmt.Errorf("pid %d: reading its cgroup: %w", pid, err))
		}
		*dst[f.name] = h
	}
	if c.io == nil && blkio != "" { // a kernel without the recursive file
		if c.io, err = r.openCounter(filepath.Join(blkio, "blkio.throttle.io_service_bytes")); err != nil {
			return fail(fmt.Errorf("pid %d: reading its cgroup: %w", pid, err))
		}
	}
	own, err1 := os.Readlink(filepath.Join(proc, "ns", "net"))
	host, err2 := os.Readlink(filepath.Join(r.procRoot, "1", "ns", "net"))
	if !(err1 == nil && err2 == nil && own == host) {
		if c.netDev, err = r.openCounter(filepath.Join(proc, "net", "dev")); err != nil {
			c.netDev = nil // optional, as a read failure is
		}
	}
	if _, err := r.Read(c); err != nil { // e.g. the hierarchy is not the host's
		return fail(fmt.Errorf("pid %d: reading its cgroup: %w", pid, err))
	}
	return c, nil
}

// Read reads c's counters. It fails when a required counter (CPU usage,
// memory usage) cannot be read, e.g. once the container has stopped (a
// removed cgroup's open files fail with ENODEV).
func (r *Reader) Read(c *Container) (Sample, error) {
	var s Sample
	var err error
	if c.v2 {
		err = c.readV2(&s)
	} else {
		err = c.readV1(&s)
	}
	if err != nil {
		return Sample{}, err
	}
	if data, ok := c.optional(c.netDev); ok {
		s.Net = ParseNetDev(data)
	}
	return s, nil
}

// optional is f's content; false when f is absent or unreadable.
func (c *Container) optional(f *counter) ([]byte, bool) {
	if f == nil {
		return nil, false
	}
	data, err := f.read(&c.buf)
	return data, err == nil
}

func (c *Container) readV2(s *Sample) error {
	data, err := c.cpuUsage.read(&c.buf)
	if err != nil {
		return err
	}
	usec, ok := KeyedValue(data, "usage_usec")
	if !ok {
		return fmt.Errorf("%s: no usage_usec", c.cpuUsage.path)
	}
	s.CPUUsageNanos = usec * 1000
	if s.MemoryUsage, err = c.uint(c.memUsage); err != nil {
		return err
	}
	if data, ok := c.optional(c.memStat); ok {
		s.InactiveFile, _ = KeyedValue(data, "inactive_file")
	}
	if c.memLimit != nil {
		s.MemoryLimit, _ = c.uint(c.memLimit) // "max": 0
	}
	if data, ok := c.optional(c.cpuMax); ok {
		s.CPULimitCores = ParseCPUMax(data)
	}
	if c.pids != nil {
		s.PIDs, _ = c.uint(c.pids)
	}
	if data, ok := c.optional(c.io); ok {
		s.ReadBytes, s.WriteBytes = ParseIOStat(data)
	}
	return nil
}

func (c *Container) readV1(s *Sample) error {
	var err error
	if s.CPUUsageNanos, err = c.uint(c.cpuUsage); err != nil {
		return err
	}
	if s.MemoryUsage, err = c.uint(c.memUsage); err != nil {
		return err
	}
	if data, ok := c.optional(c.memStat); ok {
		s.InactiveFile, _ = KeyedValue(data, "total_inactive_file")
	}
	// An unlimited v1 cgroup reports a huge page-aligned number; a limit
	// above 2^62 is treated as none.
	if c.memLimit != nil {
		if l, err := c.uint(c.memLimit); err == nil && l < 1<<62 {
			s.MemoryLimit = l
		}
	}
	if c.cpuQuota != nil && c.cpuPeriod != nil {
		quota, qerr := c.int(c.cpuQuota)
		period, perr := c.int(c.cpuPeriod)
		if qerr == nil && perr == nil && quota > 0 && period > 0 {
			s.CPULimitCores = float64(quota) / float64(period)
		}
	}
	if c.pids != nil {
		s.PIDs, _ = c.uint(c.pids)
	}
	if data, ok := c.optional(c.io); ok {
		s.ReadBytes, s.WriteBytes = ParseBlkio(data)
	}
	return nil
}

// uint reads a file holding one unsigned number; "max" reads as 0.
func (c *Container) uint(f *counter) (uint64, error) {
	data, err := f.read(&c.buf)
	if err != nil {
		return 0, err
	}
	v := bytes.TrimSpace(data)
	if string(v) == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", f.path, err)
	}
	return n, nil
}

func (c *Container) int(f *counter) (int64, error) {
	data, err := f.read(&c.buf)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", f.path, err)
	}
	return n, nil
}

// ParseProcCgroup parses /proc/<pid>/cgroup ("hierarchy-id:controllers:path"
// lines) into the path of each controller; the v2 (unified) entry, with no
// controllers, is under "". Named hierarchies (name=systemd) are skipped.
func ParseProcCgroup(data []byte) map[string]string {
	m := map[string]string{}
	for line := range lines(data) {
		_, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		ctrls, path, ok := strings.Cut(rest, ":")
		if !ok || !strings.HasPrefix(path, "/") {
			continue
		}
		if ctrls == "" {
			m[""] = path
			continue
		}
		for c := range strings.SplitSeq(ctrls, ",") {
			if c != "" && !strings.HasPrefix(c, "name=") {
				m[c] = path
			}
		}
	}
	return m
}

// KeyedValue is key's value in a flat keyed file ("key value" lines:
// cpu.stat, memory.stat); false when absent or malformed.
func KeyedValue(data []byte, key string) (uint64, bool) {
	for line := range lines(data) {
		k, v, ok := strings.Cut(line, " ")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// ParseCPUMax parses cgroup v2 cpu.max ("$MAX $PERIOD", MAX "max" when
// unlimited) into cores; 0 when unlimited or malformed.
func ParseCPUMax(data []byte) float64 {
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0
	}
	quota, err1 := strconv.ParseUint(f[0], 10, 64)
	period, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil || quota == 0 || period == 0 {
		return 0
	}
	return float64(quota) / float64(period)
}

// ParseIOStat sums rbytes and wbytes over the devices of cgroup v2 io.stat
// ("MAJ:MIN rbytes=N wbytes=N rios=N ..." lines).
func ParseIOStat(data []byte) (read, write uint64) {
	for line := range lines(data) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "rbytes":
				read += n
			case "wbytes":
				write += n
			}
		}
	}
	return read, write
}

// ParseBlkio sums the Read and Write bytes over the devices of cgroup v1
// blkio.throttle.io_service_bytes ("MAJ:MIN Op N" lines and a "Total N"
// line).
func ParseBlkio(data []byte) (read, write uint64) {
	for line := range lines(data) {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		n, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil {
			continue
		}
		switch strings.ToLower(f[1]) {
		case "read":
			read += n
		case "write":
			write += n
		}
	}
	return read, write
}

// ParseNetDev sums /proc/<pid>/net/dev's counters over every interface but
// lo. The engine's stats report the interfaces it created in the
// container's namespace (eth0...), never lo, so on a Docker network the sums
// match docker stats; tunnels a container creates itself are counted here
// and not by the engine.
func ParseNetDev(data []byte) NetCounters {
	var c NetCounters
	for line := range lines(data) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) == "lo" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 10 {
			continue
		}
		var v [4]uint64
		var err error
		for i, idx := range []int{0, 1, 8, 9} {
			if v[i], err = strconv.ParseUint(f[idx], 10, 64); err != nil {
				break
			}
		}
		if err != nil {
			continue
		}
		c.RxBytes += v[0]
		c.RxPackets += v[1]
		c.TxBytes += v[2]
		c.TxPackets += v[3]
	}
	return c
}

func lines(data []byte) iter.Seq[string] {
	return func(yield func(string) bool) {
		for l := range bytes.Lines(data) {
			if !yield(string(bytes.TrimSuffix(l, []byte("\n")))) {
				return
			}
		}
	}
}
