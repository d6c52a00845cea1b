package bustest

import (
	"context"
	"flag"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/service"
)

type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStartupNamesTheNATSRefusal: a service whose identity the server refuses
// fails (the client gives up on the connection) naming the URL and the
// server's answer, instead of waiting on "context deadline exceeded".
func TestStartupNamesTheNATSRefusal(t *testing.T) {
	t.Parallel()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, Username: "svc", Password: "right", NoLog: true, NoSigs: true})
	require.NoError(t, err)
	go s.Start()
	t.Cleanup(s.Shutdown)
	require.True(t, s.ReadyForConnections(10*time.Second))

	var logs syncLog
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := bus.Config{URL: "nats://svc:wrong@" + s.Addr().String(), InboxPrefix: "_INBOX"}
	var streams bus.StreamsConfig
	streams.RegisterFlags(flag.NewFlagSet("test", flag.ContinueOnError)) // the defaults
	rt, err := service.Connect("test", cfg, admin.Config{ShutdownTimeout: time.Second}, log, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(rt.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	err = rt.Serve(ctx, streams, func(context.Context, *errgroup.Group) error {
		t.Error("work started without NATS")
		return nil
	})
	require.ErrorContains(t, err, "NATS at nats://svc:xxxxx@"+s.Addr().String()+": nats: Authorization Violation")
	require.NoError(t, ctx.Err(), "Serve waited for the deadline")
	require.Contains(t, logs.String(), "Authorization Violation")
	require.NotContains(t, logs.String()+err.Error(), "wrong", "password in the log")
}
