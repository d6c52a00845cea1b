package natsauth

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// op is one thing an identity tries; it returns the server's answer, if any.
type op func(ctx context.Context, c *Client) error

func pub(subj string) op {
	return func(ctx context.Context, c *Client) error {
		_, err := c.JS.Publish(ctx, subj, []byte("{}"))
		return err
	}
}

// request sends a bare request, as to pull or ack by hand.
func request(subj string) op {
	return func(ctx context.Context, c *Client) error {
		_, err := c.Conn.RequestWithContext(ctx, subj, []byte("+ACK"))
		return err
	}
}

func sub(subj string) op {
	return func(_ context.Context, c *Client) error {
		s, err := c.Conn.SubscribeSync(subj)
		if err != nil {
			return err
		}
		_, err = s.NextMsg(300 * time.Millisecond)
		return err
	}
}

func createConsumer(stream, durable string, filters ...string) op {
	return func(ctx context.Context, c *Client) error {
		cfg := jetstream.ConsumerConfig{Durable: durable, AckPolicy: jetstream.AckExplicitPolicy}
		if len(filters) == 1 {
			cfg.FilterSubject = filters[0]
		} else {
			cfg.FilterSubjects = filters
		}
		_, err := c.JS.CreateOrUpdateConsumer(ctx, stream, cfg)
		return err
	}
}

func openKV(bucket string) op {
	return func(ctx context.Context, c *Client) error {
		_, err := c.JS.KeyValue(ctx, bucket)
		return err
	}
}

// kvGet opens bucket (STREAM.INFO, allowed) and gets key.
func kvGet(bucket, key string) op {
	return func(ctx context.Context, c *Client) error {
		kv, err := c.JS.KeyValue(ctx, bucket)
		if err != nil {
			return err
		}
		_, err = kv.Get(ctx, key)
		return err
	}
}

func onStream(name string, f func(context.Context, jetstream.Stream) error) op {
	return func(ctx context.Context, c *Client) error {
		st, err := c.JS.Stream(ctx, name) // STREAM.INFO, which every service may do
		if err != nil {
			return err
		}
		return f(ctx, st)
	}
}

// TestEveryIdentityIsRefusedWhatIsNotItsJob tries, as each identity, what
// an attacker holding its key would, and requires the server's permission
// violation for exactly that subject (not a timeout).
func TestEveryIdentityIsRefusedWhatIsNotItsJob(t *testing.T) {
	t.Parallel()
	d := Deploy(t, hostA, hostB)
	s := Server(t, d, ServerOptions{})
	admin := Connect(t, "admin", d.Config(s, "admin"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, bus.EnsureStreams(ctx, Connect(t, "setup", d.Config(s, "setup")).JS, DefaultStreams()))
	setup := admin // KV buckets and a consumer, as the services would make them
	for _, b := range []string{bucketDone, bucketBaselines, bucketLedger} {
		_, err := setup.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b})
		require.NoError(t, err)
	}
	_, err := setup.JS.CreateOrUpdateConsumer(ctx, bus.StreamTelemetry, jetstream.ConsumerConfig{Durable: durableDetector, AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)

	colA := collector(hostA)
	tokB := subject.Token(hostB)
	const api = "$JS.API."
	tests := []struct {
		id, name string
		op       op
		want     string // the subject in the server's "Permissions Violation for ..."
	}{
		// The collector, on every Docker host: the most exposed key.
		{colA, "publish a threat", pub(subject.Threat("critical", "r1")), `Publish to "whalewatch.threats.critical.r1"`},
		{colA, "publish a response request, even for its host", pub(subject.ActionRequest(hostA, "c1")), `Publish to "whalewatch.actions.request.web-1.c1"`},
		{colA, "publish another host's telemetry", pub(subject.Telemetry(hostB, "c1", "process")), `Publish to "whalewatch.telemetry.` + tokB + `.c1.process"`},
		{colA, "publish another host's result", pub(subject.ActionResult(hostB, "c1")), `Publish to "whalewatch.actions.result.` + tokB + `.c1"`},
		{colA, "publish another consumer's dead letter", pub(subject.DeadLetter("indexer-threats")), `Publish to "whalewatch.deadletter.indexer-threats"`},
		{colA, "consume another host's requests", createConsumer(bus.StreamActions, durableCollector(hostB), subject.ActionRequestsFor(hostB)),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_ACTIONS.collector-actions-` + tokB + `.whalewatch.actions.request.` + tokB + `.>"`},
		{colA, "widen its own consumer to every host", createConsumer(bus.StreamActions, durableCollector(hostA), subject.AllRequests),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_ACTIONS.collector-actions-web-1.whalewatch.actions.request.>"`},
		{colA, "its own consumer with filters out of the subject", createConsumer(bus.StreamActions, durableCollector(hostA), subject.ActionRequestsFor(hostA), subject.ActionRequestsFor(hostB)),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_ACTIONS.collector-actions-web-1"`},
		{colA, "pull another host's requests", request(api + "CONSUMER.MSG.NEXT.WHALEWATCH_ACTIONS." + durableCollector(hostB)),
			`Publish to "` + api + `CONSUMER.MSG.NEXT.WHALEWATCH_ACTIONS.collector-actions-` + tokB + `"`},
		{colA, "create a consumer on the threats stream", createConsumer(bus.StreamThreats, "spy", subject.AllThreats),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_THREATS.spy.whalewatch.threats.>"`},
		{colA, "subscribe to threats", sub(subject.AllThreats), `Subscription to "whalewatch.threats.>"`},
		{colA, "subscribe to every inbox", sub("_INBOX.>"), `Subscription to "_INBOX.>"`},
		{colA, "subscribe to the detector's inbox", sub(Inbox("detector") + ".>"), `Subscription to "_INBOX_detector.>"`},
		{colA, "copy the threats into a stream of its own", func(ctx context.Context, c *Client) error {
			_, err := c.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "COPY", Sources: []*jetstream.StreamSource{{Name: bus.StreamThreats}}})
			return err
		}, `Publish to "` + api + `STREAM.CREATE.COPY"`},
		{colA, "create a stream (the setup job's)", func(ctx context.Context, c *Client) error {
			_, err := c.JS.CreateStream(ctx, jetstream.StreamConfig{Name: bus.StreamThreats, Subjects: []string{subject.AllThreats}})
			return err
		}, `Publish to "` + api + `STREAM.CREATE.WHALEWATCH_THREATS"`},
		{colA, "delete a stream", func(ctx context.Context, c *Client) error { return c.JS.DeleteStream(ctx, bus.StreamTelemetry) },
			`Publish to "` + api + `STREAM.DELETE.WHALEWATCH_TELEMETRY"`},
		{colA, "purge a stream", onStream(bus.StreamActions, func(ctx context.Context, st jetstream.Stream) error { return st.Purge(ctx) }),
			`Publish to "` + api + `STREAM.PURGE.WHALEWATCH_ACTIONS"`},
		{colA, "delete a message", onStream(bus.StreamActions, func(ctx context.Context, st jetstream.Stream) error { return st.DeleteMsg(ctx, 1) }),
			`Publish to "` + api + `STREAM.MSG.DELETE.WHALEWATCH_ACTIONS"`},
		{colA, "delete the detector's consumer", func(ctx context.Context, c *Client) error {
			return c.JS.DeleteConsumer(ctx, bus.StreamTelemetry, durableDetector)
		}, `Publish to "` + api + `CONSUMER.DELETE.WHALEWATCH_TELEMETRY.detector"`},
		{colA, "ack the detector's messages", request("$JS.ACK.WHALEWATCH_TELEMETRY.detector.1.1.1.1.0"),
			`Publish to "$JS.ACK.WHALEWATCH_TELEMETRY.detector.1.1.1.1.0"`},
		{colA, "mark another host's request done", pub("$KV.whalewatch_actions_done." + tokB + ".r1"),
			`Publish to "$KV.whalewatch_actions_done.` + tokB + `.r1"`},
		{colA, "write a done key outside any host", pub("$KV.whalewatch_actions_done.r1"), `Publish to "$KV.whalewatch_actions_done.r1"`},
		{colA, "read another host's done key", kvGet(bucketDone, tokB+".r1"),
			`Publish to "` + api + `DIRECT.GET.KV_whalewatch_actions_done.$KV.whalewatch_actions_done.` + tokB + `.r1"`},
		{colA, "read the done bucket by sequence", request(api + "STREAM.MSG.GET.KV_whalewatch_actions_done"),
			`Publish to "` + api + `STREAM.MSG.GET.KV_whalewatch_actions_done"`},
		{colA, "read the done bucket by sequence, direct", request(api + "DIRECT.GET.KV_whalewatch_actions_done"),
			`Publish to "` + api + `DIRECT.GET.KV_whalewatch_actions_done"`},
		{colA, "read the notifier's ledger", openKV(bucketLedger), `Publish to "` + api + `STREAM.INFO.KV_whalewatch_notifier_sent"`},
		{colA, "write a baseline", pub("$KV.whalewatch_baselines.nginx"), `Publish to "$KV.whalewatch_baselines.nginx"`},

		// The detector publishes threats and requests, and nothing of the collectors'.
		{"detector", "publish telemetry", pub(subject.Telemetry(hostA, "c1", "process")), `Publish to "whalewatch.telemetry.web-1.c1.process"`},
		{"detector", "publish a response result", pub(subject.ActionResult(hostA, "c1")), `Publish to "whalewatch.actions.result.web-1.c1"`},
		{"detector", "consume a host's requests", createConsumer(bus.StreamActions, durableCollector(hostA), subject.ActionRequestsFor(hostA)),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_ACTIONS.collector-actions-web-1.whalewatch.actions.request.web-1.>"`},
		{"detector", "delete a stream", func(ctx context.Context, c *Client) error { return c.JS.DeleteStream(ctx, bus.StreamThreats) },
			`Publish to "` + api + `STREAM.DELETE.WHALEWATCH_THREATS"`},
		{"detector", "purge a stream", onStream(bus.StreamTelemetry, func(ctx context.Context, st jetstream.Stream) error { return st.Purge(ctx) }),
			`Publish to "` + api + `STREAM.PURGE.WHALEWATCH_TELEMETRY"`},
		{"detector", "read the collectors' done bucket", openKV(bucketDone), `Publish to "` + api + `STREAM.INFO.KV_whalewatch_actions_done"`},
		{"detector", "take over the indexer's consumer", createConsumer(bus.StreamThreats, durableIndexerThreats, subject.AllThreats),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_THREATS.indexer-threats.whalewatch.threats.>"`},

		// The indexer and the notifier only consume.
		{"indexer", "publish a response request", pub(subject.ActionRequest(hostA, "c1")), `Publish to "whalewatch.actions.request.web-1.c1"`},
		{"indexer", "publish a threat", pub(subject.Threat("high", "r1")), `Publish to "whalewatch.threats.high.r1"`},
		{"indexer", "publish telemetry", pub(subject.Telemetry(hostA, "c1", "process")), `Publish to "whalewatch.telemetry.web-1.c1.process"`},
		{"indexer", "purge the threats", onStream(bus.StreamThreats, func(ctx context.Context, st jetstream.Stream) error { return st.Purge(ctx) }),
			`Publish to "` + api + `STREAM.PURGE.WHALEWATCH_THREATS"`},
		{"indexer", "pull the notifier's threats", request(api + "CONSUMER.MSG.NEXT.WHALEWATCH_THREATS." + durableNotifier),
			`Publish to "` + api + `CONSUMER.MSG.NEXT.WHALEWATCH_THREATS.notifier"`},
		{"notifier", "publish telemetry", pub(subject.Telemetry(hostA, "c1", "process")), `Publish to "whalewatch.telemetry.web-1.c1.process"`},
		{"notifier", "publish a threat", pub(subject.Threat("critical", "r1")), `Publish to "whalewatch.threats.critical.r1"`},
		{"notifier", "publish a response request", pub(subject.ActionRequest(hostA, "c1")), `Publish to "whalewatch.actions.request.web-1.c1"`},
		{"notifier", "consume telemetry", createConsumer(bus.StreamTelemetry, "notifier", subject.AllTelemetry),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_TELEMETRY.notifier.whalewatch.telemetry.>"`},
		{"notifier", "take over the indexer's consumer", createConsumer(bus.StreamThreats, durableIndexerThreats, subject.AllThreats),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_THREATS.indexer-threats.whalewatch.threats.>"`},
		{"notifier", "delete a stream", func(ctx context.Context, c *Client) error { return c.JS.DeleteStream(ctx, bus.StreamThreats) },
			`Publish to "` + api + `STREAM.DELETE.WHALEWATCH_THREATS"`},
		{colA, "update the done bucket (shrink its TTL: every host's records)", func(ctx context.Context, c *Client) error {
			_, err := c.JS.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketDone, TTL: time.Second})
			return err
		}, `Publish to "` + api + `STREAM.UPDATE.KV_whalewatch_actions_done"`},
		{"notifier", "update its ledger bucket (shrink its TTL)", func(ctx context.Context, c *Client) error {
			_, err := c.JS.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketLedger, TTL: time.Second})
			return err
		}, `Publish to "` + api + `STREAM.UPDATE.KV_whalewatch_notifier_sent"`},
		{"notifier", "read the baselines", openKV(bucketBaselines), `Publish to "` + api + `STREAM.INFO.KV_whalewatch_baselines"`},
	}
	// Stream management is the setup identity's: every service may only read
	// the streams; setup may create and update them, and nothing more.
	shrink := func(ctx context.Context, c *Client) error {
		cfg := DefaultStreams()
		cfg.Telemetry.MaxBytes = 1 << 20
		_, err := c.JS.UpdateStream(ctx, cfg.Specs()[0])
		return err
	}
	for _, id := range []string{colA, "detector", "indexer", "notifier"} {
		tests = append(tests, struct {
			id, name string
			op       op
			want     string
		}{id, "update a stream (the setup job's)", shrink, `Publish to "` + api + `STREAM.UPDATE.WHALEWATCH_TELEMETRY"`})
	}
	tests = append(tests, []struct {
		id, name string
		op       op
		want     string
	}{
		{"setup", "delete a stream", func(ctx context.Context, c *Client) error { return c.JS.DeleteStream(ctx, bus.StreamThreats) },
			`Publish to "` + api + `STREAM.DELETE.WHALEWATCH_THREATS"`},
		{"setup", "purge a stream", onStream(bus.StreamThreats, func(ctx context.Context, st jetstream.Stream) error { return st.Purge(ctx) }),
			`Publish to "` + api + `STREAM.PURGE.WHALEWATCH_THREATS"`},
		{"setup", "create another stream", func(ctx context.Context, c *Client) error {
			_, err := c.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "COPY", Sources: []*jetstream.StreamSource{{Name: bus.StreamThreats}}})
			return err
		}, `Publish to "` + api + `STREAM.CREATE.COPY"`},
		{"setup", "publish a threat", pub(subject.Threat("critical", "r1")), `Publish to "whalewatch.threats.critical.r1"`},
		{"setup", "publish a response request", pub(subject.ActionRequest(hostA, "c1")), `Publish to "whalewatch.actions.request.web-1.c1"`},
		{"setup", "read the threats", createConsumer(bus.StreamThreats, "spy", subject.AllThreats),
			`Publish to "` + api + `CONSUMER.CREATE.WHALEWATCH_THREATS.spy.whalewatch.threats.>"`},
	}...)
	for _, tt := range tests {
		t.Run(tt.id+" may not "+tt.name, func(t *testing.T) {
			t.Parallel()
			c := Connect(t, tt.id, d.Config(s, tt.id))
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := tt.op(ctx, c)
			require.Error(t, err, "the refused call must not succeed")
			v := c.Violation(tt.want, 5*time.Second)
			require.NotNil(t, v, "no permission violation for %s (call: %v; violations: %v)", tt.want, err, c.Violations())
			require.ErrorIs(t, v, nats.ErrPermissionViolation)
		})
	}
}

// TestUnknownClientsAreTurnedAway: there is no anonymous access, and a key
// the script did not make is not an identity.
func TestUnknownClientsAreTurnedAway(t *testing.T) {
	t.Parallel()
	d := Deploy(t, hostA)
	s := Server(t, d, ServerOptions{})
	stranger := Deploy(t, hostA) // same names, other keys
	strangerKey, err := nats.NkeyOptionFromSeed(stranger.Seed("detector"))
	require.NoError(t, err)
	tests := []struct {
		name string
		opts []nats.Option
	}{
		{"no credentials", nil},
		{"a user and password", []nats.Option{nats.UserInfo("detector", "detector")}},
		{"an nkey of another deployment", []nats.Option{strangerKey}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			nc, err := nats.Connect(s.ClientURL(), append(tt.opts, nats.Timeout(2*time.Second))...)
			if err == nil {
				nc.Close()
			}
			require.ErrorIs(t, err, nats.ErrAuthorization)
		})
	}
}
