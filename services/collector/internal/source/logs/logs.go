// Package logs is the log source: each running container's stdout and
// stderr as batches of bounded, rate-limited lines. It reads the json-file
// log driver's file on disk where it can (as Filebeat and Promtail do:
// following rotation, from the end, woken by inotify) and the Engine API's
// log stream otherwise (other drivers, a file it cannot read, a remote
// engine).
package logs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/retry"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// Log sources (-log-source).
const (
	SourceAuto      = "auto"       // the file when readable, else the Engine API
	SourceFile      = "file"       // the json-file log file only (other drivers: the Engine API)
	SourceEngineAPI = "engine-api" // the Engine API stream only
)

// Config configures the log source.
type Config struct {
	Enabled           bool
	Source            string
	BatchLines        int
	BatchInterval     time.Duration
	MaxLinesPerSecond int
}

// RegisterFlags registers the log flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.BoolVar(&c.Enabled, "logs", true, "follow each running container's stdout and stderr and publish them as log batches")
	fs.StringVar(&c.Source, "log-source", SourceAuto, "where logs are read: auto (the json-file driver's file on disk when readable, else the Engine API stream), file (the same, and no fallback when a json-file log file cannot be read), engine-api (always the stream)")
	fs.IntVar(&c.BatchLines, "log-batch-lines", 100, "log lines per batch at most (1 to 256)")
	fs.DurationVar(&c.BatchInterval, "log-batch-interval", 50*time.Millisecond, "how long a log line waits for its batch to fill before the batch is published")
	fs.IntVar(&c.MaxLinesPerSecond, "log-max-lines-per-second", 1000, "log lines per second published per container at most; the rest are dropped and counted")
}

// Validate checks c.
func (c *Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	switch c.Source {
	case SourceAuto, SourceFile, SourceEngineAPI:
	default:
		errs = append(errs, fmt.Errorf("log-source must be auto, file or engine-api, not %q", c.Source))
	}
	if c.BatchLines < 1 || c.BatchLines > event.MaxLogLines {
		errs = append(errs, fmt.Errorf("log-batch-lines must be between 1 and %d", event.MaxLogLines))
	}
	if c.BatchInterval < time.Millisecond {
		errs = append(errs, errors.New("log-batch-interval must be positive"))
	}
	if c.MaxLinesPerSecond < 1 {
		errs = append(errs, errors.New("log-max-lines-per-second must be positive"))
	}
	return errors.Join(errs...)
}

// API is the engine call of the stream fallback.
type API interface {
	ContainerLogs(ctx context.Context, id string, options container.LogsOptions) (io.ReadCloser, error)
}

// Monitor is the log source (a source.PerContainer).
//
// From the file (json-file driver, LogPath readable): a container that
// started less than logCatchUp ago is read from the start of its current
// file (what it printed before the collector attached is not lost), any
// other from the end: its history is never re-read. Rotation (the driver
// renames the file and creates a new one) is followed: the renamed file is
// read to its end, then the new one from its start; compressed rotated files
// are ignored. inotify on the container's log directory (one instance for
// all containers) wakes the reader; without it the file is polled.
//
// From the Engine API (GET /containers/{id}/logs?follow=1&timestamps=1):
// the same start rules, expressed as since/tail; a container restarted
// within logStartSlack of its previous run's last lines has those lines
// published again.
//
// Bounds: lines are cut to event.MaxLogLine (counted in the batch's
// Truncated); a batch holds at most BatchLines lines and about
// maxBatchJSON bytes of JSON; each container may publish at most
// MaxLinesPerSecond lines per second (a token bucket with a one-second
// burst): the rest are read and dropped, counted in the next batch's Dropped
// and in whalewatch_collector_log_lines_total{outcome="rate_limited"}, so
// that one container that floods its log cannot fill the shared publish
// queue.
type Monitor struct {
	docker  API
	cfg     Config
	host    string
	log     *slog.Logger
	now     func() time.Time
	errors  prometheus.Counter
	m       *metrics
	watch   *watcher      // nil: files are polled
	backoff time.Duration // first reconnection delay; 0: minBackoff
	poll    time.Duration // how often a file is checked without a wake-up
}

type metrics struct {
	lines   *prometheus.CounterVec // by outcome: published, rate_limited, truncated
	readers *prometheus.CounterVec // by source: file, engine-api
	bad     prometheus.Counter     // unreadable json-file records
}

// New returns the log source. errs counts failed reads.
func New(docker API, cfg Config, host string, log *slog.Logger, errs prometheus.Counter, reg prometheus.Registerer) *Monitor {
	m := &metrics{
		lines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_log_lines_total",
			Help: "Container log lines read, by outcome (published, rate_limited, truncated).",
		}, []string{"outcome"}),
		readers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_log_readers_total",
			Help: "Container logs followed, by source: file (the json-file driver's file on disk) or engine-api (the Engine API stream).",
		}, []string{"source"}),
		bad: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_log_bad_records_total",
			Help: "json-file log records that could not be read (skipped).",
		}),
	}
	reg.MustRegister(m.lines, m.readers, m.bad)
	l := &Monitor{docker: docker, cfg: cfg, host: host, log: log, now: time.Now, errors: errs, m: m,
		poll: fallbackPoll}
	if cfg.Source != SourceEngineAPI {
		w, err := newWatcher()
		if err != nil {
			log.Info("inotify unavailable: log files are polled", "every", fallbackPoll, "err", err)
		} else {
			l.watch, l.poll = w, safetyPoll
		}
	}
	return l
}

// Close releases the inotify instance.
func (l *Monitor) Close() error {
	if l.watch != nil {
		return l.watch.close()
	}
	return nil
}

const (
	logCatchUp    = time.Minute
	logStartSlack = 5 * time.Second
	// maxBatchJSON bounds the estimated JSON size of a batch's lines, well
	// below NATS's default 1 MiB payload limit.
	maxBatchJSON = 512 << 10
	minBackoff   = 500 * time.Millisecond
	maxBackoff   = 30 * time.Second
)

// Monitor follows ctr's output until ctx ends: from the file when the
// configuration and the driver allow and the file can be opened, else from
// the Engine API.
func (l *Monitor) Monitor(ctx context.Context, ctr *source.Container, emit source.Emit) error {
	b := newLogBatcher(l, ctr.ID, emit)
	defer b.close()
	if l.cfg.Source != SourceEngineAPI && ctr.LogDriver == "json-file" && ctr.LogPath != "" {
		err := l.tail(ctx, ctr, b)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		l.errors.Inc()
		if l.cfg.Source == SourceFile {
			return fmt.Errorf("reading the log file: %w", err)
		}
		l.log.Debug("log file unreadable, following the Engine API stream", "container_id", ctr.ID, "err", err)
	}
	return l.stream(ctx, ctr, b)
}

// stream follows the Engine API's log stream, reconnecting after the last
// line read.
func (l *Monitor) stream(ctx context.Context, ctr *source.Container, b *logBatcher) error {
	l.m.readers.WithLabelValues(SourceEngineAPI).Inc()
	log := l.log.With("container_id", ctr.ID)
	opts := container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true, Tail: "0"}
	if !ctr.StartedAt.IsZero() && l.now().Sub(ctr.StartedAt) < logCatchUp {
		opts.Tail, opts.Since = "", unixNano(ctr.StartedAt.Add(-logStartSlack))
	}
	initial := minBackoff
	if l.backoff > 0 {
		initial = l.backoff
	}
	everOpened := false
	err := retry.Backoff{Initial: initial, Max: maxBackoff}.Do(ctx, func(ctx context.Context) error {
		opened, err := l.follow(ctx, ctr, opts, b)
		everOpened = everOpened || opened
		if ctx.Err() != nil || err == nil {
			return nil // stopped, or the container's output ended
		}
		l.errors.Inc()
		if !everOpened {
			return retry.Permanent(fmt.Errorf("following logs: %w", err)) // e.g. a log driver that cannot be read
		}
		if !b.last.IsZero() {
			opts.Tail, opts.Since = "", unixNano(b.last.Add(time.Nanosecond))
		}
		return err
	}, func(err error, delay time.Duration) {
		log.Warn("log stream failed, reconnecting", "err", err, "backoff", delay)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// follow reads one log stream until it ends; opened says the engine accepted
// the request.
func (l *Monitor) follow(ctx context.Context, ctr *source.Container, opts container.LogsOptions, b *logBatcher) (opened bool, err error) {
	body, err := l.docker.ContainerLogs(ctx, ctr.ID, opts)
	if err != nil {
		return false, err
	}
	defer body.Close()
	err = demuxLogs(body, ctr.TTY, b.timestamped)
	b.flushPartial()
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return true, err
}

func unixNano(t time.Time) string { return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond()) }

// Stream numbers of the engine's multiplexed (stdcopy) log format.
const (
	streamStdout    = 1
	streamStderr    = 2
	streamSystemErr = 3
)

// demuxLogs splits the engine's log stream into lines, calling line for each
// with the stream it came from (1 stdout, 2 stderr), at most
// event.MaxLogLine bytes of it (without the newline), and whether it was
// longer. A TTY container's stream is raw; any other's is stdcopy frames: an
// 8-byte header (stream, 0, 0, 0, big-endian length) and that many bytes.
// Frames are copied through, never buffered whole: a frame header announcing
// 4 GiB costs nothing. It returns io.EOF at the end of the stream.
func demuxLogs(r io.Reader, tty bool, line func(stream int, text []byte, truncated bool)) error {
	out := lineSplitter{max: event.MaxLogLine}
	errOut := lineSplitter{max: event.MaxLogLine}
	flush := func() {
		out.flush(func(t []byte, c bool) { line(streamStdout, t, c) })
		errOut.flush(func(t []byte, c bool) { line(streamStderr, t, c) })
	}
	defer flush()
	buf := make([]byte, 32<<10)
	if tty {
		emit := func(t []byte, c bool) { line(streamStdout, t, c) }
		for {
			n, err := r.Read(buf)
			out.write(buf[:n], emit)
			if err != nil {
				return err
			}
		}
	}
	br := bufio.NewReaderSize(r, 32<<10)
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("log stream: truncated frame header: %w", err)
			}
			return err
		}
		size := int64(binary.BigEndian.Uint32(hdr[4:]))
		var sp *lineSplitter
		var stream int
		switch hdr[0] {
		case streamStdout, 0: // 0 is stdin, which logs never carry
			sp, stream = &out, streamStdout
		case streamStderr:
			sp, stream = &errOut, streamStderr
		case streamSystemErr:
			msg, _ := io.ReadAll(io.LimitReader(br, min(size, 512)))
			return fmt.Errorf("log stream: engine error: %s", bytes.TrimSpace(msg))
		default:
			return fmt.Errorf("log stream: unknown stream %d", hdr[0])
		}
		emit := func(t []byte, c bool) { line(stream, t, c) }
		for size > 0 {
			n, err := br.Read(buf[:min(size, int64(len(buf)))])
			sp.write(buf[:n], emit)
			size -= int64(n)
			if err != nil {
				if errors.Is(err, io.EOF) {
					return fmt.Errorf("log stream: truncated frame: %w", io.ErrUnexpectedEOF)
				}
				return err
			}
		}
	}
}

// lineSplitter cuts a byte stream into lines of at most max bytes; the rest
// of a longer line is discarded and the line marked truncated. A trailing CR
// (TTY output) is dropped.
type lineSplitter struct {
	max  int
	buf  []byte
	over bool
}

func (s *lineSplitter) write(p []byte, emit func(line []byte, truncated bool)) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk, p = p[:i], p[i+1:]
		} else {
			p = nil
		}
		if !s.over {
			if room := s.max - len(s.buf); len(chunk) > room {
				s.buf, s.over = append(s.buf, chunk[:room]...), true
			} else {
				s.buf = append(s.buf, chunk...)
			}
		}
		if i >= 0 {
			s.emit(emit)
		}
	}
}

// flush emits an unterminated last line.
func (s *lineSplitter) flush(emit func([]byte, bool)) {
	if len(s.buf) > 0 || s.over {
		s.emit(emit)
	}
}

func (s *lineSplitter) emit(emit func([]byte, bool)) {
	line := s.buf
	if !s.over && len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	emit(line, s.over)
	s.buf, s.over = s.buf[:0], false
}

// logBatcher collects a container's lines into one batch per stream and
// publishes a batch when it is full or batchInterval after its first line.
// The reader goroutine adds lines; a timer (armed only while something is
// pending, so an idle container costs nothing) flushes.
type logBatcher struct {
	l     *Monitor
	id    string
	emit  source.Emit
	limit tokenBucket
	last  time.Time // engine time of the last line taken (reader goroutine only)

	mu       sync.Mutex
	batches  [3]*pendingBatch // by stream number
	dropped  int              // lines dropped since the last batch published
	lastDrop int              // stream of the last dropped line
	timer    *time.Timer
	seq      int
	closed   bool // no emit after close: the monitor has returned
}

type pendingBatch struct {
	first     time.Time
	lines     []string
	size      int // estimated JSON bytes
	truncated int
}

func newLogBatcher(l *Monitor, id string, emit source.Emit) *logBatcher {
	return &logBatcher{l: l, id: id, emit: emit, limit: newTokenBucket(l.cfg.MaxLinesPerSecond, l.now)}
}

// timestamped takes one line of the Engine API's stream (timestamp first,
// as the engine wrote it).
func (b *logBatcher) timestamped(stream int, raw []byte, truncated bool) {
	if !b.limit.allow() { // before anything costly: a flood is mostly dropped
		b.drop(stream)
		return
	}
	ts, text := splitTimestamp(raw)
	b.take(stream, ts, text, truncated)
}

// line takes one line of stream written at ts (zero: unknown).
func (b *logBatcher) line(stream int, ts time.Time, text []byte, truncated bool) {
	if !b.limit.allow() {
		b.drop(stream)
		return
	}
	b.take(stream, ts, text, truncated)
}

func (b *logBatcher) drop(stream int) {
	b.l.m.lines.WithLabelValues("rate_limited").Inc()
	b.mu.Lock()
	b.dropped++
	b.lastDrop = stream
	b.arm()
	b.mu.Unlock()
}

func (b *logBatcher) take(stream int, ts time.Time, text []byte, truncated bool) {
	if !ts.IsZero() {
		b.last = ts
	}
	s := string(text)
	if truncated {
		s = event.Truncate(s+event.Ellipsis, event.MaxLogLine)
		b.l.m.lines.WithLabelValues("truncated").Inc()
	} else if t := event.Truncate(s, event.MaxLogLine); t != s { // invalid UTF-8 grown by replacement
		s, truncated = t, true
	}
	if ts.IsZero() {
		ts = b.l.now()
	}
	size := jsonSize(s)
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.batches[stream]
	if p != nil && p.size+size > maxBatchJSON {
		b.publish(stream)
		p = nil
	}
	if p == nil {
		p = &pendingBatch{first: ts}
		b.batches[stream] = p
		b.arm()
	}
	p.lines = append(p.lines, s)
	p.size += size
	if truncated {
		p.truncated++
	}
	if len(p.lines) >= b.l.cfg.BatchLines {
		b.publish(stream)
	}
}

// arm starts the flush timer unless it runs. Called with mu held.
func (b *logBatcher) arm() {
	if b.timer == nil {
		b.timer = time.AfterFunc(b.l.cfg.BatchInterval, b.flushAll)
	}
}

func (b *logBatcher) flushAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.timer = nil
	if !b.closed {
		b.flushLocked()
	}
}

func (b *logBatcher) flushLocked() {
	for stream := range b.batches {
		if b.batches[stream] != nil {
			b.publish(stream)
		}
	}
	if b.dropped > 0 { // only drops since the last batch: report them alone
		b.batches[b.lastDrop] = &pendingBatch{first: b.l.now(), lines: []string{}} // "lines": [], not null
		b.publish(b.lastDrop)
	}
}

// flushPartial publishes what is pending when a stream ends.
func (b *logBatcher) flushPartial() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
}

// close stops the timer and publishes what is pending.
func (b *logBatcher) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	b.flushLocked()
	b.closed = true
}

// publish emits the pending batch of stream. Called with mu held.
func (b *logBatcher) publish(stream int) {
	p := b.batches[stream]
	b.batches[stream] = nil
	name := "stdout"
	if stream == streamStderr {
		name = "stderr"
	}
	b.seq++
	b.l.m.lines.WithLabelValues("published").Add(float64(len(p.lines)))
	b.emit(logEvent(b.l.host, b.id, name, p, b.dropped, b.seq, b.l.now()))
	b.dropped = 0
}

// logEvent is one batch as telemetry (ECS process/info: the output of the
// container's processes).
func logEvent(host, containerID, stream string, p *pendingBatch, dropped, seq int, now time.Time) *event.Event {
	msg := fmt.Sprintf("%d %s lines", len(p.lines), stream)
	if dropped > 0 {
		msg += fmt.Sprintf(", %d dropped", dropped)
	}
	return &event.Event{
		Timestamp: p.first.UTC(),
		Message:   msg,
		Event: event.Meta{
			ID: event.DeriveID(host, "log", containerID, stream, strconv.FormatInt(p.first.UnixNano(), 10),
				strconv.Itoa(seq), strconv.Itoa(len(p.lines))),
			Kind:     event.KindEvent,
			Category: []string{"process"},
			Type:     []string{"info"},
			Action:   "log-lines",
			Dataset:  event.TelemetryLog.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host: event.Host{Name: host},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryLog,
			Log:           &event.LogBatch{Stream: stream, Lines: p.lines, Dropped: dropped, Truncated: p.truncated},
		},
	}
}

// splitTimestamp splits the engine's "RFC3339Nano " prefix off a line; a
// line without one is returned whole with a zero time.
func splitTimestamp(line []byte) (time.Time, []byte) {
	sp := bytes.IndexByte(line, ' ')
	if sp < 20 || sp > 40 {
		return time.Time{}, line
	}
	t, err := time.Parse(time.RFC3339Nano, string(line[:sp]))
	if err != nil {
		return time.Time{}, line
	}
	return t, line[sp+1:]
}

// jsonSize estimates the bytes s takes as a JSON string: control characters
// and HTML-sensitive ones are escaped as \u00XX.
func jsonSize(s string) int {
	n := len(s) + 3
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			n += 5
		}
	}
	return n
}

// tokenBucket allows rate events per second with a burst of one second. It
// reads the clock only when its tokens run out.
type tokenBucket struct {
	rate   float64
	tokens float64
	last   time.Time
	now    func() time.Time
}

func newTokenBucket(rate int, now func() time.Time) tokenBucket {
	return tokenBucket{rate: float64(rate), tokens: float64(rate), last: now(), now: now}
}

func (t *tokenBucket) allow() bool {
	if t.tokens < 1 {
		now := t.now()
		t.tokens = min(t.rate, t.tokens+now.Sub(t.last).Seconds()*t.rate)
		t.last = now
		if t.tokens < 1 {
			return false
		}
	}
	t.tokens--
	return true
}
