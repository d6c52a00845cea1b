package natsauth

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// TestTLS runs deploy/nats/nats-tls.conf with certificates from
// scripts/nats-tls.sh: a service with the CA, a client certificate and its
// nkey works through bus.Connect; without any of them it is turned away.
func TestTLS(t *testing.T) {
	d := Deploy(t, hostA)
	dir := d.TLS(t)
	// nats-tls.conf reads the paths from nats-server's environment.
	t.Setenv("NATS_TLS_CERT", filepath.Join(dir, "server.pem"))
	t.Setenv("NATS_TLS_KEY", filepath.Join(dir, "server.key"))
	t.Setenv("NATS_TLS_CA", filepath.Join(dir, "ca.pem"))
	s := Server(t, d, ServerOptions{Config: "nats-tls.conf"})

	cfg := d.Config(s, collector(hostA))
	cfg.TLS = bus.TLSConfig{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}
	require.NoError(t, cfg.Validate())
	c := Connect(t, collector(hostA), cfg)
	require.True(t, c.Conn.TLSRequired())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	setupCfg := d.Config(s, "setup")
	setupCfg.TLS = cfg.TLS
	require.NoError(t, bus.EnsureStreams(ctx, Connect(t, "setup", setupCfg).JS, DefaultStreams()))
	require.NoError(t, bus.EnsureStreams(ctx, c.JS, DefaultStreams()))
	require.NoError(t, publish(ctx, c.JS, subject.Telemetry(hostA, "c1", "process"), hostA))

	nkey, err := nats.NkeyOptionFromSeed(d.Seed(collector(hostA)))
	require.NoError(t, err)
	ca := nats.RootCAs(cfg.TLS.CAFile)
	cert := nats.ClientCert(cfg.TLS.CertFile, cfg.TLS.KeyFile)
	tests := []struct {
		name string
		opts []nats.Option
		want string // a regular expression
	}{
		// nats.go upgrades to the TLS the server requires, but trusts only the system's CAs.
		{"no TLS options", []nats.Option{nkey}, "certificate signed by unknown authority"},
		// The server's alert or, when it closed first, the closed connection.
		{"TLS without a client certificate", []nats.Option{nkey, ca}, "certificate required|connection closed by remote|broken pipe|connection reset"},
		{"TLS and a certificate without an nkey", []nats.Option{ca, cert}, "Authorization Violation"},
		{"a server certificate the client does not trust", []nats.Option{nkey, cert, nats.RootCAs(filepath.Join("testdata", "other-ca.pem"))},
			"certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := nats.Connect(s.ClientURL(), append(tt.opts, nats.Timeout(2*time.Second))...)
			if err == nil {
				nc.Close()
			}
			require.Error(t, err)
			require.Regexp(t, tt.want, err.Error())
		})
	}
}
