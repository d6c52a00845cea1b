package service

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
)

// Runtime is what every service builds first: its NATS connection and its
// admin endpoint, which already checks NATS for readiness. Services add their
// own readiness checks to Admin before Serve.
type Runtime struct {
	Conn  *nats.Conn
	JS    jetstream.JetStream
	Admin *admin.Server
	log   *slog.Logger
	url   string // redacted, for logs
}

// Connect connects to NATS as "whalewatch-<name>" (retrying in the background
// when the server is not up yet) and builds the admin endpoint.
func Connect(name string, natsCfg bus.Config, adminCfg admin.Config, log *slog.Logger, reg *prometheus.Registry) (*Runtime, error) {
	nc, err := bus.Connect(natsCfg, "whalewatch-"+name, log)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	srv := admin.New(adminCfg, reg, log)
	srv.AddCheck("nats", bus.Ready(nc))
	return &Runtime{Conn: nc, JS: js, Admin: srv, log: log, url: bus.RedactURLs(natsCfg.URL)}, nil
}

// Close closes the NATS connection.
func (rt *Runtime) Close() { rt.Conn.Close() }

// streamsRetry logs why the streams could not be ensured. While NATS is not
// connected the JetStream call can only time out, so the log names the URL and
// why the connection is down instead of "context deadline exceeded".
func (rt *Runtime) streamsRetry(err error) {
	if st := rt.Conn.Status(); st != nats.CONNECTED {
		// A refused or failed dial is logged by bus.Connect with its cause;
		// what the server said (e.g. an authorization violation) is here.
		if cause := rt.Conn.LastError(); cause != nil {
			rt.log.Warn("waiting for NATS", "err", bus.ConnError(rt.url, cause))
		} else {
			rt.log.Debug("waiting for NATS", "url", rt.url, "status", st.String())
		}
		return
	}
	rt.log.Warn("ensuring streams, will retry", "err", err)
}

// Serve runs the admin endpoint and, once the streams exist (retrying until
// NATS answers), work, which may start more goroutines on g. It returns when
// ctx ends or any of them fails; readiness answers 503 from then on.
func (rt *Runtime) Serve(ctx context.Context, streams bus.StreamsConfig, work func(ctx context.Context, g *errgroup.Group) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return rt.Admin.Run(gctx) })
	g.Go(func() error {
		// A connection the client closed (it gives up after the server
		// refused the identity) never comes back: fail, so that the
		// orchestrator restarts the service and shows why.
		ectx, cancel := context.WithCancel(gctx)
		defer cancel()
		var closed error
		streams.Log = rt.log // a stream it may not update is used as it is, with a warning
		if err := bus.EnsureStreamsRetry(ectx, rt.JS, streams, func(err error) {
			if rt.Conn.IsClosed() {
				closed = bus.ConnError(rt.url, cmp.Or(rt.Conn.LastError(), nats.ErrConnectionClosed))
				cancel()
				return
			}
			rt.streamsRetry(err)
		}); err != nil {
			if closed != nil {
				return closed
			}
			return nil // shutting down
		}
		return work(gctx, g)
	})
	err := g.Wait()
	rt.Admin.SetStopping()
	return err
}
