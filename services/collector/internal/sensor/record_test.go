package sensor

import (
	"encoding/binary"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/cilium/ebpf/btf"
	"github.com/stretchr/testify/require"
)

// TestRecordLayout checks record.go's offsets against the BTF of the
// embedded object: a change of sensor.bpf.c's structs that is not mirrored
// here fails.
func TestRecordLayout(t *testing.T) {
	t.Parallel()
	spec, err := loadSensor()
	require.NoError(t, err)
	tests := []struct {
		typ     string
		size    int
		members map[string]int
	}{
		{"hdr", hdrSize, map[string]int{"ts_ns": 0, "kind": 8, "pid": 12, "tid": 16, "uid": 20, "gid": 24, "start_ns": offStart, "cid": offCID, "comm": offComm}},
		{"exec_rec", execSize, map[string]int{"ppid": offExecPPID, "args_len": offExecArgsLen, "args_full": offExecArgsFull,
			"stdio_mode": offExecMode, "stdio_rdev": offExecRdev, "filename": offExecFilename, "args": offExecArgs}},
		{"sys_rec", sysSize, map[string]int{"sc": offSysSC, "flags": offSysFlags, "ret": offSysRet, "args": offSysArgs,
			"family": offSysFamily, "lport": offSysLPort, "rport": offSysRPort, "proto": offSysProto, "laddr": offSysLAddr,
			"raddr": offSysRAddr, "path": offSysPath, "path2": offSysPath2, "aux": offSysAux}},
		{"fork_rec", forkSize, map[string]int{"child_pid": offForkChild, "child_start_ns": offForkChildStart}},
		{"exit_rec", exitSize, map[string]int{"exit_code": offExitCode}},
		{"sockstate_rec", sockStateSize, map[string]int{"skaddr": 120, "oldstate": offSockOld, "newstate": offSockNew, "family": offSockFamily,
			"sport": offSockSPort, "dport": offSockDPort, "protocol": offSockProto, "saddr": offSockSAddr, "daddr": offSockDAddr}},
	}
	for _, tc := range tests {
		var s *btf.Struct
		if err := spec.Types.TypeByName(tc.typ, &s); err != nil && tc.size < 200 {
			// Records built on the stack may have no BTF of their own;
			// the decoder's fuzz and the live tests cover them.
			continue
		}
		require.NoError(t, spec.Types.TypeByName(tc.typ, &s), tc.typ)
		require.Equal(t, tc.size, int(s.Size), "size of %s", tc.typ)
		seen := 0
		for _, m := range s.Members {
			if off, ok := tc.members[m.Name]; ok {
				require.Equal(t, off, int(m.Offset.Bytes()), "%s.%s", tc.typ, m.Name)
				seen++
			}
		}
		require.Equal(t, len(tc.members), seen, "members of %s", tc.typ)
	}
}

const testCID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// rec builds a raw record of kind with the header filled.
func rec(kind uint32, size int) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint64(b[0:], 1_000_000_000)
	binary.LittleEndian.PutUint32(b[8:], kind)
	binary.LittleEndian.PutUint32(b[12:], 42)
	binary.LittleEndian.PutUint32(b[16:], 42)
	binary.LittleEndian.PutUint64(b[offStart:], 500_000_000)
	copy(b[offCID:], testCID)
	copy(b[offComm:], "sh")
	return b
}

func execRec(filename string, args ...string) []byte {
	b := rec(kindExec, execSize)
	binary.LittleEndian.PutUint32(b[offExecPPID:], 7)
	argv := strings.Join(args, "\x00") + "\x00"
	n := copy(b[offExecArgs:offExecArgs+argsLen-1], argv)
	binary.LittleEndian.PutUint32(b[offExecArgsLen:], uint32(n))
	binary.LittleEndian.PutUint32(b[offExecArgsFull:], uint32(len(argv)))
	copy(b[offExecFilename:offExecFilename+pathLen-1], filename)
	binary.LittleEndian.PutUint16(b[offExecMode:], 0o140777) // stdin: socket
	return b
}

func sysRec(sc uint32, ret int64, path, path2 string, args ...uint64) []byte {
	b := rec(kindSyscall, sysSize)
	binary.LittleEndian.PutUint32(b[offSysSC:], sc)
	binary.LittleEndian.PutUint64(b[offSysRet:], uint64(ret))
	for i, a := range args {
		binary.LittleEndian.PutUint64(b[offSysArgs+8*i:], a)
	}
	copy(b[offSysPath:offSysPath+pathLen-1], path)
	copy(b[offSysPath2:offSysPath2+pathLen-1], path2)
	return b
}

func TestDecode(t *testing.T) {
	t.Parallel()
	var r record
	require.NoError(t, decode(execRec("/bin/nc", "nc", "-l", "-p", "\xff80"), &r))
	require.Equal(t, "/bin/nc", r.filename)
	require.Equal(t, []string{"nc", "-l", "-p", "\uFFFD80"}, r.args, "invalid UTF-8 replaced")
	require.Equal(t, 42, r.pid)
	require.Equal(t, 7, r.ppid)
	require.Equal(t, testCID, r.cid)
	require.Equal(t, "sh", r.comm)
	require.False(t, r.argsTruncated)
	require.Equal(t, "socket", stdioType(r.stdio[0]))

	// A record with one path ends after it.
	short := sysRec(scUnlink, 0, "/tmp/x", "")[:offSysPath+len("/tmp/x")+1]
	require.NoError(t, decode(short, &r))
	require.Equal(t, "/tmp/x", r.path)
	require.Empty(t, r.path2)

	bad := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short header", rec(kindExec, hdrSize-1)},
		{"short exec", rec(kindExec, offExecArgs-1)},
		{"argv beyond the record", execRec("/x", "a", "b")[:offExecArgs+2]},
		{"short syscall", rec(kindSyscall, offSysPath)},
		{"unknown kind", rec(99, execSize)},
		{"container id not hex", func() []byte { b := execRec("/x"); copy(b[offCID:], "zz"); return b }()},
		{"argv length beyond buffer", func() []byte {
			b := execRec("/x")
			binary.LittleEndian.PutUint32(b[offExecArgsLen:], argsLen+1)
			return b
		}()},
		{"unknown syscall", sysRec(scMax, 0, "", "")},
		{"pid zero", func() []byte { b := execRec("/x"); binary.LittleEndian.PutUint32(b[12:], 0); return b }()},
	}
	for _, tc := range bad {
		require.ErrorIs(t, decode(tc.b, &r), errRecord, tc.name)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(execRec("/bin/sh", "sh", "-c", "id"))
	f.Add(sysRec(scOpenat, -30, "/etc/passwd", "", uint64(0xffffff9c), 0, 0o1101, 0o644))
	f.Add(sysRec(scConnect, -111, "", "", 3))
	f.Add(sysRec(scRenameat2, 0, "/b", "/a", 3, 0, 4, 0, 0))
	f.Add(sysRec(scUnlink, 0, "/tmp/x", "")[:offSysPath+7])
	f.Add(rec(kindFork, forkSize))
	f.Add(rec(kindExit, exitSize))
	f.Add(rec(kindSockState, sockStateSize))
	b := newBuilder("fuzz", clock{}, nil, nil)
	b.readl = func(string) (string, error) { return "", errRecord }
	f.Fuzz(func(t *testing.T, data []byte) {
		var r record
		if decode(data, &r) != nil {
			return
		}
		for _, s := range append([]string{r.cid, r.comm, r.filename, r.path, r.path2, r.aux}, r.args...) {
			if !utf8.ValidString(s) || len(s) > argsLen {
				t.Fatalf("string not bounded or not UTF-8: %q", s)
			}
		}
		if e := b.build(&r); e != nil {
			if e.Bound() && len(e.Message) > 1<<20 {
				t.Fatal("unbounded message")
			}
			if err := e.Validate(); err != nil {
				t.Fatalf("invalid event: %v", err)
			}
		}
	})
}
