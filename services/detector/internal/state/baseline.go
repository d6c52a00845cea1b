package state

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// BaselineBucket is the NATS KV bucket of image baselines. One key per image
// (KeyFor), the value a Baseline as JSON. Replicas share it; users view,
// export, edit and reset it with `detector baseline`.
const BaselineBucket = "whalewatch_baselines"

// Baseline is what an image was seen doing while it was learning. After
// LearningUntil, an executable, parent→child pair, listening port or outbound
// destination outside these sets is new (Snapshot.New*).
//
// It is the stored JSON a user edits: to allow a destination, add it to
// destinations; to end learning at once, set learning_until to the past.
type Baseline struct {
	Image         string    `json:"image"`
	FirstSeen     time.Time `json:"first_seen"`
	LearningUntil time.Time `json:"learning_until"`
	Executables   []string  `json:"executables"`  // process.executable, or process.name when unknown
	ParentChild   []string  `json:"parent_child"` // "parent -> child" executables
	ListenPorts   []string  `json:"listen_ports"` // "tcp/8080"
	Destinations  []string  `json:"destinations"` // "10.0.0.5:443"
	// CPU samples learned: their sum and count give the usual CPU percent.
	CPUSamples    int64     `json:"cpu_samples"`
	CPUPercentSum float64   `json:"cpu_percent_sum"`
	Updated       time.Time `json:"updated"`
}

// Learning reports whether b is still learning at now.
func (b *Baseline) Learning(now time.Time) bool { return now.Before(b.LearningUntil) }

// CPUMean is the image's usual CPU percent, 0 while fewer than 10 samples.
func (b *Baseline) CPUMean() float64 {
	if b.CPUSamples < 10 {
		return 0
	}
	return b.CPUPercentSum / float64(b.CPUSamples)
}

// Decode reads a stored baseline.
func DecodeBaseline(data []byte) (Baseline, error) {
	var b Baseline
	if err := json.Unmarshal(data, &b); err != nil {
		return Baseline{}, fmt.Errorf("decoding baseline: %w", err)
	}
	if b.Image == "" {
		return Baseline{}, fmt.Errorf("decoding baseline: image missing")
	}
	return b, nil
}

// Encode returns b as stored JSON, sets sorted.
func (b Baseline) Encode() []byte {
	for _, s := range []*[]string{&b.Executables, &b.ParentChild, &b.ListenPorts, &b.Destinations} {
		*s = slices.Clone(*s)
		slices.Sort(*s)
		*s = slices.Compact(*s)
	}
	data, _ := json.MarshalIndent(b, "", "  ") // only strings, numbers and times
	return data
}

// baselineSets is the lookup form of a baseline's sets.
type baselineSets struct {
	exe, pc, listen, dest map[string]struct{}
	cpuSamples            int64
	cpuSum                float64
}

func newSets() *baselineSets {
	return &baselineSets{exe: map[string]struct{}{}, pc: map[string]struct{}{}, listen: map[string]struct{}{}, dest: map[string]struct{}{}}
}

func setsOf(b *Baseline) *baselineSets {
	s := newSets()
	for _, p := range []struct {
		m   map[string]struct{}
		src []string
	}{{s.exe, b.Executables}, {s.pc, b.ParentChild}, {s.listen, b.ListenPorts}, {s.dest, b.Destinations}} {
		for _, v := range p.src {
			p.m[v] = struct{}{}
		}
	}
	s.cpuSamples, s.cpuSum = b.CPUSamples, b.CPUPercentSum
	return s
}

func (s *baselineSets) empty() bool {
	return len(s.exe)+len(s.pc)+len(s.listen)+len(s.dest) == 0 && s.cpuSamples == 0
}

// mergeInto adds s to b, each set bounded by max entries.
func (s *baselineSets) mergeInto(b *Baseline, max int) {
	add := func(dst *[]string, src map[string]struct{}) {
		have := map[string]struct{}{}
		for _, v := range *dst {
			have[v] = struct{}{}
		}
		for _, v := range slices.Sorted(maps.Keys(src)) {
			if len(*dst) >= max {
				return
			}
			if _, ok := have[v]; !ok {
				*dst = append(*dst, v)
			}
		}
	}
	add(&b.Executables, s.exe)
	add(&b.ParentChild, s.pc)
	add(&b.ListenPorts, s.listen)
	add(&b.Destinations, s.dest)
	b.CPUSamples += s.cpuSamples
	b.CPUPercentSum += s.cpuSum
}

// ImageKey names the image of container c for baselines: name:tag, or
// name@digest when untagged, or the bare name. Empty when c has no image.
func ImageKey(c *event.Container) string {
	if c == nil || c.Image.Name == "" {
		return ""
	}
	name := c.Image.Name
	last := name[strings.LastIndex(name, "/")+1:]
	if strings.ContainsAny(last, ":@") {
		return name
	}
	if len(c.Image.Tag) > 0 && c.Image.Tag[0] != "" {
		return name + ":" + c.Image.Tag[0]
	}
	if c.Image.Hash != nil && len(c.Image.Hash.All) > 0 {
		return name + "@" + c.Image.Hash.All[0]
	}
	return name
}

// KeyFor is the KV key of an image's baseline: "img." and the image key in
// unpadded URL-safe base64 (KV keys cannot hold ':' or '@').
func KeyFor(image string) string {
	return "img." + base64.RawURLEncoding.EncodeToString([]byte(image))
}

// ImageOfKey reverses KeyFor.
func ImageOfKey(key string) (string, error) {
	rest, ok := strings.CutPrefix(key, "img.")
	if !ok {
		return "", fmt.Errorf("not a baseline key: %q", event.Truncate(key, 128))
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return "", fmt.Errorf("baseline key %q: %w", event.Truncate(key, 128), err)
	}
	return string(b), nil
}
