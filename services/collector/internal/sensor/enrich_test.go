package sensor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func TestEnricher(t *testing.T) {
	t.Parallel()
	known := &knownContainers{m: map[string]event.Container{}}
	known.add("a", "web")
	q := newEnricher(known, time.Second, 3)
	var got []string
	out := func(e *event.Event) { got = append(got, e.Message+"@"+e.Container.Name) }
	ev := func(id, msg string) *event.Event {
		return &event.Event{Message: msg, Container: &event.Container{ID: id}}
	}
	t0 := time.Unix(1000, 0)

	q.add(ev("a", "a1"), t0, out)
	require.Equal(t, []string{"a1@web"}, got, "a known container's event goes at once")

	q.add(ev("b", "b1"), t0, out)
	q.add(ev("b", "b2"), t0, out)
	q.add(ev("a", "a2"), t0, out)
	require.Equal(t, []string{"a1@web", "a2@web"}, got, "b waits, a does not wait behind it")

	q.flush(t0.Add(100*time.Millisecond), 0, out)
	require.Len(t, got, 2, "b still unknown, within its wait")

	known.add("b", "db")
	q.add(ev("b", "b3"), t0.Add(200*time.Millisecond), out)
	require.Len(t, got, 2, "b3 waits behind b1 and b2 even though b is known now")
	q.flush(t0.Add(200*time.Millisecond), 0, out)
	require.Equal(t, []string{"a1@web", "a2@web", "b1@db", "b2@db", "b3@db"}, got, "in order")

	// Unknown until the wait is over: published with the id alone.
	got = nil
	q.add(ev("c", "c1"), t0, out)
	q.flush(t0.Add(999*time.Millisecond), 0, out)
	require.Empty(t, got)
	q.flush(t0.Add(time.Second), 0, out)
	require.Equal(t, []string{"c1@"}, got)

	// Bounded: with max events waiting, the next goes at once.
	got = nil
	for _, m := range []string{"d1", "d2", "d3", "d4"} {
		q.add(ev("d", m), t0, out)
	}
	require.Equal(t, []string{"d4@"}, got)
	q.drain(out)
	require.Equal(t, []string{"d4@", "d1@", "d2@", "d3@"}, got)
	require.Empty(t, q.pending)
}
