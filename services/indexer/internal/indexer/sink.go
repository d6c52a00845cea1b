package indexer

import (
	"context"
	"fmt"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
)

// Sink stores events where analysts search them.
//
// Write stores a batch and returns one error per document, in order: nil
// when the document is stored (or was already: writing the same ID twice
// stores it once), a bus.Permanent error when the store will never take it
// (the message is dead-lettered), an *OpsError when the store refuses writes
// for a reason an operator must fix (retried, and readiness fails), any other
// error when it may take it later (retried). Write is called concurrently by
// the workers and must not keep the documents after it returns.
//
// Close releases the sink's resources once no Write is running.
type Sink interface {
	Write(ctx context.Context, docs []Doc) []error
	Close(ctx context.Context) error
}

// OpsError is a refusal an operator must fix: a write block on the index
// (cluster_block_exception), a missing privilege (403, security_exception),
// a missing index or data stream (404, index_not_found_exception). It is not
// the document's fault: the document is retried, never dead-lettered.
type OpsError struct {
	Reason string // metric label: cluster_block, forbidden, not_found, unauthorized
	Err    error
}

func (e *OpsError) Error() string { return e.Err.Error() }
func (e *OpsError) Unwrap() error { return e.Err }

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
