package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/whalewatch/whalewatch/pkg/bus"
)

// imageState is one image's baseline as this replica knows it: what is in
// KV (stored, at revision rev; rev 0 when not written yet) and what it
// learned since its last write (pending). Observations test both.
type imageState struct {
	stored  Baseline
	sets    *baselineSets
	rev     uint64
	pending *baselineSets
}

// see reports whether v is new to the baseline; while learning it records
// v instead (bounded by max) and reports false.
func (img *imageState) see(stored, pending map[string]struct{}, v string, learning bool, max int) bool {
	if _, ok := stored[v]; ok {
		return false
	}
	if _, ok := pending[v]; ok {
		return false
	}
	if !learning {
		return true
	}
	if len(stored)+len(pending) < max {
		pending[v] = struct{}{}
	}
	return false
}

// image returns the baseline of image key, starting one (learning from now)
// at its first sight; nil when baselines are off or the image is unknown.
func (r *Recorder) image(key string, now time.Time) *imageState {
	if key == "" || r.cfg.BaselineLearning <= 0 {
		return nil
	}
	if img, ok := r.images[key]; ok {
		return img
	}
	b := Baseline{Image: key, FirstSeen: now.UTC(), LearningUntil: now.Add(r.cfg.BaselineLearning).UTC()}
	img := &imageState{stored: b, sets: setsOf(&b), pending: newSets()}
	r.images[key] = img
	return img
}

// Baseline returns this replica's view of image's baseline (stored and
// pending merged), and whether it knows the image.
func (r *Recorder) Baseline(image string) (Baseline, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	img, ok := r.images[image]
	if !ok {
		return Baseline{}, false
	}
	b := img.stored
	b.Executables = append([]string(nil), b.Executables...)
	b.ParentChild = append([]string(nil), b.ParentChild...)
	b.ListenPorts = append([]string(nil), b.ListenPorts...)
	b.Destinations = append([]string(nil), b.Destinations...)
	img.pending.mergeInto(&b, r.cfg.BaselineMaxEntries)
	return b, true
}

// applyStored makes b (at revision rev) image's stored baseline, unless a
// newer revision is known; b nil means the key was deleted (a reset), and
// learning restarts at the image's next sight.
func (r *Recorder) applyStored(image string, b *Baseline, rev uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	img, ok := r.images[image]
	if b == nil {
		delete(r.images, image)
		return
	}
	if !ok {
		r.images[image] = &imageState{stored: *b, sets: setsOf(b), rev: rev, pending: newSets()}
		return
	}
	if rev <= img.rev {
		return
	}
	img.stored, img.sets, img.rev = *b, setsOf(b), rev
}

// BaselineConfig is the baselines bucket's configuration.
func BaselineConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      BaselineBucket,
		Description: "whalewatch detector: behaviour baseline per image (see detector baseline --help)",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	}
}

// OpenBaselines opens the baselines bucket, creating or updating it
// (bus.EnsureKeyValue: deadlines sized for a cluster, retried until ctx
// ends; onErr, may be nil, sees each failed try).
func OpenBaselines(ctx context.Context, js bus.KeyValueManager, replicas int, onErr func(error)) (jetstream.KeyValue, error) {
	kv, err := bus.EnsureKeyValue(ctx, js, BaselineConfig(replicas), onErr)
	if err != nil {
		return nil, fmt.Errorf("opening KV bucket %s: %w", BaselineBucket, err)
	}
	return kv, nil
}

// SyncBaselines keeps r's baselines in step with kv until ctx ends: it
// watches every key (other replicas' learning, users' edits and resets)
// and writes what r learned every BaselineFlush, merging with the stored
// value under optimistic concurrency. ready is closed once the stored
// baselines are loaded. Write failures are retried at the next flush.
func (r *Recorder) SyncBaselines(ctx context.Context, kv jetstream.KeyValue, ready chan<- struct{}, onErr func(error)) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watching %s: %w", BaselineBucket, err)
	}
	defer func() { _ = w.Stop() }()
	tick := time.NewTicker(r.cfg.BaselineFlush)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := r.Flush(fctx, kv); err != nil {
				onErr(err)
			}
			return nil
		case entry, ok := <-w.Updates():
			if !ok {
				return errors.New("baseline watcher closed")
			}
			if entry == nil {
				if ready != nil {
					close(ready)
					ready = nil
				}
				continue
			}
			r.applyEntry(entry, onErr)
		case <-tick.C:
			if err := r.Flush(ctx, kv); err != nil && ctx.Err() == nil {
				onErr(err)
			}
		}
	}
}

func (r *Recorder) applyEntry(entry jetstream.KeyValueEntry, onErr func(error)) {
	image, err := ImageOfKey(entry.Key())
	if err != nil {
		onErr(err)
		return
	}
	if entry.Operation() != jetstream.KeyValuePut {
		r.applyStored(image, nil, entry.Revision())
		return
	}
	b, err := DecodeBaseline(entry.Value())
	if err != nil {
		onErr(fmt.Errorf("baseline of %q: %w", image, err))
		return
	}
	b.Image = image
	r.applyStored(image, &b, entry.Revision())
}

// Flush writes every baseline with something learned since its last write
// (or never written) to kv.
func (r *Recorder) Flush(ctx context.Context, kv jetstream.KeyValue) error {
	type work struct {
		image string
		base  Baseline
		rev   uint64
		delta *baselineSets
	}
	var todo []work
	r.mu.Lock()
	for image, img := range r.images {
		if img.rev != 0 && img.pending.empty() {
			continue
		}
		todo = append(todo, work{image, img.stored, img.rev, img.pending})
		img.pending = newSets()
	}
	r.mu.Unlock()
	var errs []error
	for _, w := range todo {
		if err := r.write(ctx, kv, w.image, w.base, w.rev, w.delta); err != nil {
			errs = append(errs, err)
			r.mu.Lock()
			if img, ok := r.images[w.image]; ok {
				mergeSets(img.pending, w.delta)
			}
			r.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

func mergeSets(dst, src *baselineSets) {
	for _, p := range [][2]map[string]struct{}{{dst.exe, src.exe}, {dst.pc, src.pc}, {dst.listen, src.listen}, {dst.dest, src.dest}} {
		for k := range p[1] {
			p[0][k] = struct{}{}
		}
	}
	dst.cpuSamples += src.cpuSamples
	dst.cpuSum += src.cpuSum
}

// write merges delta into the stored baseline of image with compare-and-set,
// re-reading and retrying when another replica wrote in between.
func (r *Recorder) write(ctx context.Context, kv jetstream.KeyValue, image string, base Baseline, knownRev uint64, delta *baselineSets) error {
	key := KeyFor(image)
	for range 5 {
		var b Baseline
		var rev uint64
		var err error
		entry, gerr := kv.Get(ctx, key)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound) || errors.Is(gerr, jetstream.ErrKeyDeleted):
			if knownRev != 0 {
				return nil // reset by a user while we learned: learning restarts
			}
			b = base
			delta.mergeInto(&b, r.cfg.BaselineMaxEntries)
			b.Updated = r.now().UTC()
			rev, err = kv.Create(ctx, key, b.Encode())
		case gerr != nil:
			r.kvWrites.WithLabelValues("error").Inc()
			return fmt.Errorf("reading baseline of %q: %w", image, gerr)
		default:
			if b, err = DecodeBaseline(entry.Value()); err != nil {
				b = base // a broken value (bad manual edit) is replaced
			}
			b.Image = image
			delta.mergeInto(&b, r.cfg.BaselineMaxEntries)
			b.Updated = r.now().UTC()
			rev, err = kv.Update(ctx, key, b.Encode(), entry.Revision())
		}
		if errors.Is(err, jetstream.ErrKeyExists) {
			r.kvWrites.WithLabelValues("conflict").Inc()
			continue
		}
		if err != nil {
			r.kvWrites.WithLabelValues("error").Inc()
			return fmt.Errorf("writing baseline of %q: %w", image, err)
		}
		r.kvWrites.WithLabelValues("stored").Inc()
		r.applyStored(image, &b, rev)
		return nil
	}
	return fmt.Errorf("writing baseline of %q: too many concurrent updates", image)
}
