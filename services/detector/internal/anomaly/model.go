package anomaly

import (
	"cmp"
	"container/list"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"sync"
)

// Config parameterises a Model. Zero fields take the defaults of
// DefaultConfig.
type Config struct {
	Trees      int // t, isolation trees per forest
	SampleSize int // ψ, vectors drawn for each tree
	// Window is how many of a key's most recent vectors the forest is
	// trained on; older ones are forgotten.
	Window int
	// RetrainEvery retrains a key's forest after this many new vectors.
	RetrainEvery int
	// MinTrain is how many vectors a key needs before its first forest;
	// until then it scores 0 and Trained is false.
	MinTrain int
	// MaxKeys bounds the keys (images) held, ≈0.4 MB each with the
	// defaults; the least recently used is evicted beyond it.
	MaxKeys int
	// ExplainAbove: Observe and Score fill Result.Top only for scores at or
	// above it, so ordinary vectors cost one walk of the forest and no
	// allocation. Zero means the default, 0.55 (1e-9 explains everything).
	ExplainAbove float64
	// Scoring is RangeAware (the zero value) or Vanilla.
	Scoring Scoring
	// Seed makes training deterministic: the same seed and the same
	// sequence of vectors for a key give the same forests and scores.
	Seed uint64
}

// DefaultConfig is Liu et al.'s t = 100, ψ = 256 over a window of 2048
// vectors, retrained every 256.
func DefaultConfig() Config {
	return Config{
		Trees:        100,
		SampleSize:   256,
		Window:       2048,
		RetrainEvery: 256,
		MinTrain:     256,
		MaxKeys:      256,
		ExplainAbove: 0.55,
		Seed:         1,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	c.Trees = cmp.Or(c.Trees, d.Trees)
	c.SampleSize = cmp.Or(c.SampleSize, d.SampleSize)
	c.Window = cmp.Or(c.Window, d.Window)
	c.RetrainEvery = cmp.Or(c.RetrainEvery, d.RetrainEvery)
	c.MinTrain = cmp.Or(c.MinTrain, d.MinTrain)
	c.MaxKeys = cmp.Or(c.MaxKeys, d.MaxKeys)
	c.ExplainAbove = cmp.Or(c.ExplainAbove, d.ExplainAbove)
	return c
}

// Validate reports a configuration the model cannot run with, after
// applying defaults to zero fields.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Trees < 1 || c.Trees > MaxTrees {
		errs = append(errs, fmt.Errorf("anomaly trees %d: want 1..%d", c.Trees, MaxTrees))
	}
	if c.SampleSize < 2 || c.SampleSize > MaxSampleSize {
		errs = append(errs, fmt.Errorf("anomaly sample size %d: want 2..%d", c.SampleSize, MaxSampleSize))
	}
	if c.Window < 2 {
		errs = append(errs, fmt.Errorf("anomaly window %d: want at least 2", c.Window))
	}
	if c.MinTrain < 2 || c.MinTrain > c.Window {
		errs = append(errs, fmt.Errorf("anomaly min train %d: want 2..window (%d)", c.MinTrain, c.Window))
	}
	if c.RetrainEvery < 1 {
		errs = append(errs, fmt.Errorf("anomaly retrain every %d: want at least 1", c.RetrainEvery))
	}
	if c.MaxKeys < 1 {
		errs = append(errs, fmt.Errorf("anomaly max keys %d: want at least 1", c.MaxKeys))
	}
	if c.Scoring != RangeAware && c.Scoring != Vanilla {
		errs = append(errs, fmt.Errorf("anomaly scoring %d: want RangeAware or Vanilla", c.Scoring))
	}
	if c.ExplainAbove < 0 || c.ExplainAbove > 1 {
		errs = append(errs, fmt.Errorf("anomaly explain above %g: want 0..1", c.ExplainAbove))
	}
	return errors.Join(errs...)
}

// Result is the verdict on one vector.
type Result struct {
	// Score is the forest's anomaly score in (0, 1]; 0 while not Trained.
	Score float64
	// Trained is false until the key has MinTrain vectors.
	Trained bool
	// Top names the features that made the vector unusual, most unusual
	// first (at most 3), when Score >= Config.ExplainAbove; nil otherwise.
	Top []string
	// Shares is each feature's share of the vector's isolation, summing to
	// 1, when Top is set (see Forest.Explain).
	Shares Vector
}

// Model holds one rolling window and forest per key (an image). It is safe
// for concurrent use; training runs in the goroutine of the Observe call that
// makes it due, outside every lock, so other calls keep scoring with the
// previous forest meanwhile.
type Model struct {
	cfg Config

	mu   sync.Mutex
	keys map[string]*list.Element // of *keyState
	lru  *list.List               // front = most recently observed
}

type keyState struct {
	key string

	mu       sync.Mutex
	ring     []row // the window, a ring buffer once full
	next     int   // where the next vector goes
	since    int   // vectors since the last training began
	trains   uint64
	training bool
	forest   *Forest
}

// New returns an empty Model.
func New(cfg Config) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Model{cfg: cfg.withDefaults(), keys: map[string]*list.Element{}, lru: list.New()}, nil
}

// Config returns the configuration in use, defaults applied.
func (m *Model) Config() Config { return m.cfg }

// Observe scores f against key's current forest, adds it to key's window,
// and, if a training is due (MinTrain vectors for the first forest, then
// every RetrainEvery), trains the next forest before returning (≈2–3 ms with
// the defaults, outside every lock). The vector is scored before it joins
// the window, so it never judges itself. The key is held in memory: the
// caller bounds its length (image names come from whoever runs containers).
func (m *Model) Observe(key string, f Features) Result {
	ks := m.state(key, true)
	x := toRow(f.Vector())

	ks.mu.Lock()
	forest := ks.forest
	if len(ks.ring) < m.cfg.Window {
		ks.ring = append(ks.ring, x)
	} else {
		ks.ring[ks.next] = x
	}
	ks.next = (ks.next + 1) % m.cfg.Window
	ks.since++
	due := !ks.training && ((forest == nil && len(ks.ring) >= m.cfg.MinTrain) ||
		(forest != nil && ks.since >= m.cfg.RetrainEvery))
	var rows []row
	var rng *rand.Rand
	if due {
		rows, rng = ks.beginTraining(m.cfg.Seed)
	}
	ks.mu.Unlock()

	res := m.result(forest, x)
	if due {
		ks.endTraining(fit(rows, m.cfg.Trees, m.cfg.SampleSize, rng))
	}
	return res
}

// Score scores f against key's current forest without learning from it.
func (m *Model) Score(key string, f Features) Result {
	ks := m.state(key, false)
	if ks == nil {
		return Result{}
	}
	ks.mu.Lock()
	forest := ks.forest
	ks.mu.Unlock()
	return m.result(forest, toRow(f.Vector()))
}

// Train retrains key's forest now on its whole window, whatever the
// schedule, and reports whether key has a forest afterwards. It does not
// train an unknown key, one with fewer than 2 vectors, or one whose training
// is already running.
func (m *Model) Train(key string) bool {
	ks := m.state(key, false)
	if ks == nil {
		return false
	}
	ks.mu.Lock()
	if ks.training || len(ks.ring) < 2 {
		ok := ks.forest != nil
		ks.mu.Unlock()
		return ok
	}
	rows, rng := ks.beginTraining(m.cfg.Seed)
	ks.mu.Unlock()
	ks.endTraining(fit(rows, m.cfg.Trees, m.cfg.SampleSize, rng))
	return true
}

// Forget drops key's window and forest.
func (m *Model) Forget(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.keys[key]; ok {
		m.lru.Remove(e)
		delete(m.keys, key)
	}
}

// Len is the number of keys held.
func (m *Model) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys)
}

// state finds key's state, marking it most recently used, and creates it
// (evicting the least recently used beyond MaxKeys) if create is set.
func (m *Model) state(key string, create bool) *keyState {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.keys[key]; ok {
		m.lru.MoveToFront(e)
		return e.Value.(*keyState)
	}
	if !create {
		return nil
	}
	ks := &keyState{key: key}
	m.keys[key] = m.lru.PushFront(ks)
	for m.lru.Len() > m.cfg.MaxKeys {
		old := m.lru.Back()
		m.lru.Remove(old)
		delete(m.keys, old.Value.(*keyState).key)
	}
	return ks
}

// beginTraining snapshots the window and derives this training's RNG from
// the seed, the key and the training count. Called with ks.mu held.
func (ks *keyState) beginTraining(seed uint64) ([]row, *rand.Rand) {
	ks.training = true
	ks.since = 0
	ks.trains++
	h := fnv.New64a()
	h.Write([]byte(ks.key))
	return slices.Clone(ks.ring), rand.New(rand.NewPCG(seed, h.Sum64()^ks.trains))
}

func (ks *keyState) endTraining(f *Forest) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.training = false
	if f != nil {
		ks.forest = f
	}
}

func (m *Model) result(f *Forest, x row) Result {
	if f == nil {
		return Result{}
	}
	sum := f.pathSum(&x, m.cfg.Scoring)
	res := Result{Score: f.score(sum), Trained: true}
	if res.Score < m.cfg.ExplainAbove {
		return res
	}
	_, res.Shares = f.explain(&x, m.cfg.Scoring)
	res.Top = top(res.Shares)
	return res
}

// top names the features whose share of the isolation is clearly above an
// even split (1/NumFeatures), largest first, at most 3; at least the largest.
func top(shares Vector) []string {
	idx := make([]int, NumFeatures)
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(shares[b], shares[a]) })
	if shares[idx[0]] == 0 {
		return nil
	}
	out := []string{names[idx[0]]}
	for _, i := range idx[1:3] {
		if shares[i] < topShare {
			break
		}
		out = append(out, names[i])
	}
	return out
}

// topShare is the share a feature needs to be named after the first: that of
// an even split over the features.
const topShare = 1.0 / NumFeatures
