package indexer

import (
	"context"
	"fmt"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
)

// Sink stores events where analysts search them.
//
// Write stores a batch and returns one error per event, in order, with the
// meaning bus.Handler gives them: nil when the event is stored (or was
// already: writing the same event.id twice stores it once), a bus.Permanent
// error when the store will never take it, any other error when it may later.
// Write is called concurrently by the consumers and must not keep the events
// after it returns.
//
// Close releases the sink's resources once no Write is running.
type Sink interface {
	Write(ctx context.Context, batch []*event.Event) []error
	Close(ctx context.Context) error
}

// DataStreamType is the data stream type of every whalewatch document.
const DataStreamType = "logs"

// Dataset is the data stream dataset of e: whalewatch.threat for threats,
// whalewatch.<kind> for telemetry, whalewatch.response for response requests
// and results. A document that is none of these is refused permanently.
func Dataset(e *event.Event) (string, error) {
	switch {
	case e.Event.Kind == event.KindAlert:
		return event.DatasetThreat, nil
	case e.Whalewatch.Telemetry.Valid():
		return e.Whalewatch.Telemetry.Dataset(), nil
	case e.Event.Dataset == event.DatasetResponse:
		return event.DatasetResponse, nil
	}
	return "", bus.Permanent(fmt.Errorf("event %s: no data stream for kind %q without a known whalewatch.telemetry",
		event.Truncate(e.Event.ID, 64), event.Truncate(string(e.Event.Kind), 32)))
}

// DataStream is the data stream e is written to in namespace ns, e.g.
// logs-whalewatch.process-default or logs-whalewatch.threat-default.
func DataStream(e *event.Event, ns string) (string, error) {
	ds, err := Dataset(e)
	if err != nil {
		return "", err
	}
	return DataStreamType + "-" + ds + "-" + ns, nil
}
