package procnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file      string
		transport Transport
		want      []Socket
	}{
		{"tcp", TCP, []Socket{
			{TCP, ap("0.0.0.0:4444"), ap("0.0.0.0:0"), Listen, 0, 41001},
			{TCP, ap("127.0.0.1:41394"), ap("127.0.0.1:4444"), Established, 1000, 41002},
			{TCP, ap("127.0.0.1:4444"), ap("127.0.0.1:41394"), Established, 0, 41003},
			{TCP, ap("127.0.0.1:49152"), ap("127.0.0.2:80"), SynSent, 0, 41004},
			{TCP, ap("127.0.0.1:49153"), ap("127.0.0.1:80"), TimeWait, 0, 0},
		}},
		{"tcp6", TCP, []Socket{
			{TCP, ap("[::]:80"), ap("[::]:0"), Listen, 0, 42001},
			{TCP, ap("[::1]:54321"), ap("[::ffff:127.0.0.1]:443"), Established, 101, 42002},
		}},
		{"udp", UDP, []Socket{
			{UDP, ap("0.0.0.0:53"), ap("0.0.0.0:0"), Close, 0, 43001},
			{UDP, ap("127.0.0.1:58016"), ap("127.0.0.1:53"), Established, 0, 43002},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			f, err := os.Open(filepath.Join("testdata", tt.file))
			require.NoError(t, err)
			defer f.Close()
			got, cut, err := Parse(f, tt.transport, 0)
			require.NoError(t, err)
			require.False(t, cut)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseBounds(t *testing.T) {
	t.Parallel()
	row := "   0: 0100007F:115C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
	in := "header\n" + strings.Repeat(row, 10) + "   1: " + strings.Repeat("0", 2*MaxLine) + "\n" + row
	got, cut, err := Parse(strings.NewReader(in), TCP, 5)
	require.NoError(t, err)
	require.True(t, cut)
	require.Len(t, got, 5)

	got, cut, err = Parse(strings.NewReader(in), TCP, 0)
	require.NoError(t, err)
	require.False(t, cut)
	require.Len(t, got, 11, "the over-long line is skipped, the one after it read")
}

func TestRead(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "42", "net")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for _, name := range []string{"tcp", "udp"} { // no tcp6/udp6: IPv6 disabled
		data, err := os.ReadFile(filepath.Join("testdata", name))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o644))
	}
	got, cut, err := Read(root, 42, 0)
	require.NoError(t, err)
	require.False(t, cut)
	require.Len(t, got, 7)

	got, cut, err = Read(root, 42, 6)
	require.NoError(t, err)
	require.True(t, cut)
	require.Len(t, got, 6)

	_, _, err = Read(root, 43, 0)
	require.Error(t, err)
}

func TestReadOwnNamespace(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/self/net/tcp"); err != nil {
		t.Skip("no /proc")
	}
	_, _, err := Read("/proc", os.Getpid(), 0)
	require.NoError(t, err)
	_, _, err = Read("/proc", 0, 0)
	require.Error(t, err, strconv.Itoa(0))
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"tcp", "tcp6", "udp"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("h\n 0: :\n 1: 0:0 0:0 1 0 0 0 0 0 0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		socks, _, err := Parse(strings.NewReader(string(data)), TCP, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(socks) > 100 {
			t.Fatalf("%d sockets beyond the bound", len(socks))
		}
		for _, s := range socks {
			if !s.Local.IsValid() || !s.Remote.IsValid() || s.State == 0 || s.State > Closing {
				t.Fatalf("invalid socket accepted: %+v", s)
			}
			if s.Local.Addr().Is4() != s.Remote.Addr().Is4() {
				t.Fatalf("mixed families: %+v", s)
			}
		}
	})
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "7", "net")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	write := func(name, content string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	write("sockstat", "sockets: used 3\nTCP: inuse 1 orphan 9 tw 0 alloc 77 mem 5\nUDP: inuse 1 mem 0\nRAW: inuse 0\n")
	write("snmp", "Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm ActiveOpens PassiveOpens CurrEstab InSegs\nTcp: 1 4 2 1 999\n")
	fp, err := Fingerprint(root, 7)
	require.NoError(t, err)
	require.Equal(t, "sockets:used=3 TCP:inuse=1 TCP:tw=0 UDP:inuse=1 ActiveOpens=4 PassiveOpens=2 CurrEstab=1 ", fp,
		"host-wide fields (orphan, alloc, mem, segments) are left out")

	write("sockstat6", "TCP6: inuse 2\nUDP6: inuse 0\n")
	fp2, err := Fingerprint(root, 7)
	require.NoError(t, err)
	require.NotEqual(t, fp, fp2)

	_, err = Fingerprint(root, 8)
	require.Error(t, err)

	if _, err := os.Stat("/proc/self/net/snmp"); err == nil {
		_, err := Fingerprint("/proc", os.Getpid())
		require.NoError(t, err)
	}
}
