package notifier

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
)

// Console prints each notice as one line (render.Line) to a writer: what
// `make run` shows, and a way to watch alerts without Slack.
type Console struct {
	mu sync.Mutex
	w  io.Writer
}

// NewConsole returns a sink that prints to w.
func NewConsole(w io.Writer) *Console { return &Console{w: w} }

// Name is the destination's name.
func (c *Console) Name() string { return DestConsole }

// Post prints n.
func (c *Console) Post(ctx context.Context, n Notice) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	var line string
	switch n.Kind {
	case render.KindDigest:
		line = "DIGEST " + strconv.Itoa(n.Digest.Count) + " threats not shown one by one (" + strconv.Itoa(n.Digest.Stale) + " older than the maximum age)"
	case render.KindGroup:
		line = "REPEATED " + strconv.Itoa(n.Count) + " more times: " + render.Line(n.Event)
	default:
		line = render.Line(n.Event)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := io.WriteString(c.w, line+"\n"); err != nil {
		return "", fmt.Errorf("printing alert: %w", err)
	}
	return "", nil
}

// Close does nothing: the writer belongs to the caller.
func (c *Console) Close(context.Context) error { return nil }

// String names the sink.
func (c *Console) String() string { return "console" }
