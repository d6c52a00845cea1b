// Package baselinecmd is `detector baseline`: view, export, edit and reset
// the per-image behaviour baselines in the NATS KV bucket
// whalewatch_baselines while detectors run (they watch the bucket, so a
// change applies at once to every replica).
package baselinecmd

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/flagenv"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// Usage is the subcommand's help.
const Usage = `usage: detector baseline [-nats-url URL] [-nats-creds FILE] COMMAND

commands:
  list                  every image with a baseline: learning or not, set sizes
  show IMAGE            one baseline as JSON, with its KV revision
  export [IMAGE...]     baselines (all, or the given images) as a JSON array
  import FILE           put the baselines of FILE (a JSON array as export
                        writes, or one object), replacing what is stored
  reset IMAGE           delete the baseline: learning restarts at the image's
                        next sight

IMAGE is name:tag, or name@sha256:... for untagged images, as list shows.
`

// Main runs the subcommand with args (after "baseline").
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("detector baseline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, Usage); fs.PrintDefaults() }
	url := fs.String("nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	creds := fs.String("nats-creds", "", "NATS credentials file (JWT + nkey)")
	if err := flagenv.Parse(fs, args, nil); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("command missing")
	}
	opts := []nats.Option{nats.Name("whalewatch-detector-baseline")}
	if *creds != "" {
		opts = append(opts, nats.UserCredentials(*creds))
	}
	nc, err := nats.Connect(*url, opts...)
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w", *url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// An existing bucket is used as the detectors configured it (replicas).
	kv, err := bus.OpenKeyValue(ctx, js, state.BaselineConfig(1), nil)
	if err != nil {
		return fmt.Errorf("opening KV bucket %s: %w", state.BaselineBucket, err)
	}
	return Run(ctx, kv, fs.Args(), stdout)
}

// Run runs one command against kv.
func Run(ctx context.Context, kv jetstream.KeyValue, args []string, stdout io.Writer) error {
	cmd, rest := args[0], args[1:]
	need := func(n int) error {
		if len(rest) != n {
			return fmt.Errorf("%s takes %d argument(s)\n\n%s", cmd, n, Usage)
		}
		return nil
	}
	switch cmd {
	case "list":
		return list(ctx, kv, stdout)
	case "show":
		if err := need(1); err != nil {
			return err
		}
		b, rev, err := get(ctx, kv, rest[0])
		if err != nil {
			return err
		}
		return writeJSON(stdout, struct {
			Revision uint64 `json:"revision"`
			Learning bool   `json:"learning"`
			state.Baseline
		}{rev, b.Learning(time.Now()), b})
	case "export":
		images := rest
		if len(images) == 0 {
			var err error
			if images, err = all(ctx, kv); err != nil {
				return err
			}
		}
		out := []state.Baseline{}
		for _, img := range images {
			b, _, err := get(ctx, kv, img)
			if err != nil {
				return err
			}
			out = append(out, b)
		}
		return writeJSON(stdout, out)
	case "import":
		if err := need(1); err != nil {
			return err
		}
		return importFile(ctx, kv, rest[0], stdout)
	case "reset":
		if err := need(1); err != nil {
			return err
		}
		if _, _, err := get(ctx, kv, rest[0]); err != nil {
			return err
		}
		if err := kv.Delete(ctx, state.KeyFor(rest[0])); err != nil {
			return fmt.Errorf("resetting %s: %w", rest[0], err)
		}
		fmt.Fprintf(stdout, "reset %s: learning restarts at its next sight\n", rest[0])
		return nil
	}
	return fmt.Errorf("unknown command %q\n\n%s", cmd, Usage)
}

func get(ctx context.Context, kv jetstream.KeyValue, image string) (state.Baseline, uint64, error) {
	e, err := kv.Get(ctx, state.KeyFor(image))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return state.Baseline{}, 0, fmt.Errorf("no baseline for image %q", image)
	}
	if err != nil {
		return state.Baseline{}, 0, fmt.Errorf("reading baseline of %q: %w", image, err)
	}
	b, err := state.DecodeBaseline(e.Value())
	if err != nil {
		return state.Baseline{}, 0, fmt.Errorf("baseline of %q: %w", image, err)
	}
	return b, e.Revision(), nil
}

func all(ctx context.Context, kv jetstream.KeyValue) ([]string, error) {
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing baselines: %w", err)
	}
	defer func() { _ = keys.Stop() }()
	var out []string
	for k := range keys.Keys() {
		if img, err := state.ImageOfKey(k); err == nil {
			out = append(out, img)
		}
	}
	slices.Sort(out)
	return out, nil
}

func list(ctx context.Context, kv jetstream.KeyValue, stdout io.Writer) error {
	images, err := all(ctx, kv)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "IMAGE\tSTATE\tLEARNING UNTIL\tEXECUTABLES\tPARENT-CHILD\tLISTEN\tDESTINATIONS\tCPU %")
	for _, img := range images {
		b, _, err := get(ctx, kv, img)
		if err != nil {
			continue // deleted meanwhile
		}
		st := "enforcing"
		if b.Learning(time.Now()) {
			st = "learning"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%.1f\n", img, st, b.LearningUntil.Format(time.RFC3339),
			len(b.Executables), len(b.ParentChild), len(b.ListenPorts), len(b.Destinations), b.CPUMean())
	}
	return w.Flush()
}

func importFile(ctx context.Context, kv jetstream.KeyValue, file string, stdout io.Writer) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("reading %s: %w", file, err)
	}
	var bs []state.Baseline
	if err := json.Unmarshal(data, &bs); err != nil {
		var one state.Baseline
		if err1 := json.Unmarshal(data, &one); err1 != nil {
			return fmt.Errorf("%s: want a JSON array of baselines or one baseline: %w", file, err)
		}
		bs = []state.Baseline{one}
	}
	for i, b := range bs {
		if b.Image == "" {
			return fmt.Errorf("%s: baseline %d has no image", file, i+1)
		}
	}
	for _, b := range bs {
		b.Updated = time.Now().UTC()
		if _, err := kv.Put(ctx, state.KeyFor(b.Image), b.Encode()); err != nil {
			return fmt.Errorf("storing baseline of %q: %w", b.Image, err)
		}
		fmt.Fprintf(stdout, "imported %s\n", b.Image)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
