package notifier

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
)

// Console prints each alert as one line (render.Line) to a writer: what
// `make run` shows, and a way to watch alerts without Slack.
type Console struct {
	mu sync.Mutex
	w  io.Writer
}

// NewConsole returns a sink that prints to w.
func NewConsole(w io.Writer) *Console { return &Console{w: w} }

// Send prints e.
func (c *Console) Send(ctx context.Context, e *event.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	line := render.Line(e) + "\n"
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := io.WriteString(c.w, line); err != nil {
		return fmt.Errorf("printing alert: %w", err)
	}
	return nil
}

// Close does nothing: the writer belongs to the caller.
func (c *Console) Close(context.Context) error { return nil }

// String names the sink.
func (c *Console) String() string { return "console" }
