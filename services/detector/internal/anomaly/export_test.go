package anomaly

import (
	"encoding/csv"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// benchDirEnv names the directory TestExportForSklearn writes to; the test
// is skipped without it. bench/anomaly/run.sh sets it.
const benchDirEnv = "WHALEWATCH_ANOMALY_BENCH_DIR"

// Synthetic container telemetry for bench/anomaly: per workload profile
// (image), trainLen vectors the model is trained on, then testLen vectors
// it scores, sampled every 10 s, with a load cycle of cycleLen samples and
// labelled attack episodes in both halves (the training window is not
// clean in production either).
const (
	trainLen   = 2048
	testLen    = 2048
	cycleLen   = 2048
	benchSeeds = 10
)

// sample is one generated vector with its ground truth.
type sample struct {
	v    Vector
	kind string // "" for normal, else the attack
}

// profile generates the normal behaviour of one workload at sample i.
type profile struct {
	name string
	gen  func(rng *rand.Rand, i int, st *genState) Vector
}

// genState carries slow-moving state of a workload between samples.
type genState struct {
	mem     float64
	jobLeft int
	idle    int
}

func lognorm(rng *rand.Rand, sigma float64) float64 { return math.Exp(sigma * rng.NormFloat64()) }

func poisson(rng *rand.Rand, mean float64) float64 {
	if mean > 30 {
		return math.Max(0, math.Round(mean+math.Sqrt(mean)*rng.NormFloat64()))
	}
	l, k, p := math.Exp(-mean), 0.0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

// dayLoad is a diurnal load in [0.1, 1] with noise and occasional bursts.
func dayLoad(rng *rand.Rand, i int) float64 {
	l := 0.55 + 0.4*math.Sin(2*math.Pi*float64(i)/cycleLen) + 0.07*rng.NormFloat64()
	if rng.Float64() < 0.02 {
		l *= 1.6
	}
	return math.Max(0.1, l)
}

var profiles = []profile{
	{"web", func(rng *rand.Rand, i int, st *genState) Vector {
		// nginx-like: CPU, traffic and connections follow the requests.
		l := dayLoad(rng, i)
		rx := 2e5 * l * lognorm(rng, 0.2)
		procs := 5.0
		if rng.Float64() < 0.01 {
			procs = 6 // a reload
		}
		newp := 0.0
		if procs == 6 {
			newp = 0.1
		}
		return Vector{
			5 + 60*l + 3*rng.NormFloat64(),
			120e6 + 30e6*l + 2e6*rng.NormFloat64(),
			rx,
			8 * rx * lognorm(rng, 0.15),
			procs,
			poisson(rng, 40*l),
			newp,
		}
	}},
	{"batch", func(rng *rand.Rand, i int, st *genState) Vector {
		// A queue worker: jobs of ~30 min at two cores, idle in between.
		if st.jobLeft == 0 && st.idle == 0 {
			if rng.Float64() < 0.5 {
				st.jobLeft = 100 + rng.IntN(200)
			} else {
				st.idle = 50 + rng.IntN(100)
			}
		}
		newp := 0.0
		if st.jobLeft > 0 {
			if st.mem < 350e6 {
				newp = 0.4 // workers forked at job start
			}
			st.jobLeft--
			st.mem = math.Min(1.5e9, st.mem+6e6*lognorm(rng, 0.3))
			return Vector{
				180 + 12*rng.NormFloat64(),
				st.mem,
				1e6 * lognorm(rng, 0.5),
				5e4 * lognorm(rng, 0.4),
				7,
				2 + float64(rng.IntN(3)),
				newp,
			}
		}
		st.idle--
		st.mem = 300e6 + 5e6*rng.NormFloat64()
		return Vector{
			math.Abs(1 + 0.5*rng.NormFloat64()),
			st.mem,
			2e3 * lognorm(rng, 0.3),
			1e3 * lognorm(rng, 0.3),
			3,
			1,
			0,
		}
	}},
	{"cache", func(rng *rand.Rand, i int, st *genState) Vector {
		// redis-like: tiny CPU, steady memory, traffic by the clients.
		l := dayLoad(rng, i)
		cron := i%360 < 2
		cpu, procs, newp := 1+2*l+0.3*rng.NormFloat64(), 1.0, 0.0
		if cron {
			cpu, procs, newp = cpu+10, 2, 0.1 // BGSAVE fork
		}
		return Vector{
			math.Abs(cpu),
			800e6 + 50e6*math.Sin(2*math.Pi*float64(i)/cycleLen) + 1e6*rng.NormFloat64(),
			3e4 * l * lognorm(rng, 0.25),
			9e4 * l * lognorm(rng, 0.25),
			procs,
			12 + float64(rng.IntN(4)),
			newp,
		}
	}},
	{"api", func(rng *rand.Rand, i int, st *genState) Vector {
		// A JVM service: threads count as tasks, GC saw-tooth on memory.
		l := dayLoad(rng, i)
		if st.mem == 0 || st.mem > 1.4e9 {
			st.mem = 900e6
		}
		st.mem += 4e6 * l * lognorm(rng, 0.3)
		rx := 5e5 * l * lognorm(rng, 0.2)
		return Vector{
			30 + 80*l + 5*rng.NormFloat64(),
			st.mem,
			rx,
			0.5 * rx * lognorm(rng, 0.2),
			60 + float64(rng.IntN(6)),
			poisson(rng, 100*l),
			0,
		}
	}},
}

// attack turns a normal vector into one of an attack, of a random strength
// from blatant to subtle.
type attack struct {
	kind string
	// expect are the features an explanation should name first.
	expect []int
	apply  func(rng *rand.Rand, v Vector) Vector
}

var attacks = []attack{
	{"miner", []int{FeatCPUPercent, FeatNetRxBytesPerSec, FeatNetTxBytesPerSec, FeatConnectionCount, FeatProcessCount}, func(rng *rand.Rand, v Vector) Vector {
		// xmrig on 1–2 cores, a single pool connection, stratum traffic.
		v[FeatCPUPercent] = math.Max(v[FeatCPUPercent], float64(100*(1+rng.IntN(2)))+5*rng.NormFloat64())
		v[FeatMemoryBytes] += 5e6
		v[FeatNetRxBytesPerSec] = 800 * lognorm(rng, 0.3)
		v[FeatNetTxBytesPerSec] = 500 * lognorm(rng, 0.3)
		v[FeatConnectionCount] = 1
		v[FeatProcessCount]++
		return v
	}},
	{"exfiltration", []int{FeatNetTxBytesPerSec}, func(rng *rand.Rand, v Vector) Vector {
		v[FeatNetTxBytesPerSec] += 1e5 * math.Pow(10, 2*rng.Float64()) // +100 kB/s to +10 MB/s
		v[FeatCPUPercent] += 5
		v[FeatConnectionCount]++
		return v
	}},
	{"scanner", []int{FeatConnectionCount}, func(rng *rand.Rand, v Vector) Vector {
		v[FeatConnectionCount] += math.Round(20 * math.Pow(10, 1.5*rng.Float64())) // +20 to +630 SYN_SENT
		v[FeatNetTxBytesPerSec] += 60 * v[FeatConnectionCount]
		v[FeatCPUPercent] += 3
		return v
	}},
	{"forkbomb", []int{FeatProcessCount, FeatNewProcessRate}, func(rng *rand.Rand, v Vector) Vector {
		n := math.Round(10 * math.Pow(10, 2*rng.Float64())) // +10 to +1000 tasks
		v[FeatProcessCount] += n
		v[FeatNewProcessRate] += n / 10
		v[FeatCPUPercent] += 20 * rng.Float64()
		v[FeatMemoryBytes] += n * 1e6
		return v
	}},
}

// generate returns trainLen+testLen samples of p with attack episodes of 1–5
// samples covering about 3% of them.
func generate(p profile, seed uint64) []sample {
	rng := rand.New(rand.NewPCG(seed, 0xbe7c4))
	var st genState
	out := make([]sample, trainLen+testLen)
	for i := range out {
		out[i].v = p.gen(rng, i, &st)
	}
	for i := 0; i < len(out); {
		if rng.Float64() >= 0.01 {
			i++
			continue
		}
		a := attacks[rng.IntN(len(attacks))]
		for n := 1 + rng.IntN(5); n > 0 && i < len(out); n-- {
			out[i].v = fromVector(a.apply(rng, out[i].v)).Vector()
			out[i].kind = a.kind
			i++
		}
		i += 10
	}
	return out
}

// TestExportForSklearn writes, under $WHALEWATCH_ANOMALY_BENCH_DIR:
//   - dataset.csv: profile, split (train/test), index, label (0/1), kind, the
//     features in Names() order;
//   - go_scores.csv: profile, seed, scoring, index, score of every test
//     vector, each profile's model trained through Model.Observe on its
//     train vectors (Window = trainLen), then Train;
//   - go_timing.json: Go's training and scoring times;
//   - go_explain.json: how often the explanation names an attack's expected
//     feature first.
//
// bench/anomaly/compare.py reads them and runs scikit-learn on the same data.
func TestExportForSklearn(t *testing.T) {
	dir := os.Getenv(benchDirEnv)
	if dir == "" {
		t.Skip("set " + benchDirEnv + " to export the bench/anomaly data set")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))

	data := map[string][]sample{}
	ds := newCSV(t, filepath.Join(dir, "dataset.csv"))
	ds.write(append([]string{"profile", "split", "index", "label", "kind"}, Names()...)...)
	for pi, p := range profiles {
		data[p.name] = generate(p, uint64(2026+pi))
		for i, s := range data[p.name] {
			split, idx := "train", i
			if i >= trainLen {
				split, idx = "test", i-trainLen
			}
			label := "0"
			if s.kind != "" {
				label = "1"
			}
			rec := []string{p.name, split, strconv.Itoa(idx), label, s.kind}
			for _, x := range s.v {
				rec = append(rec, strconv.FormatFloat(x, 'g', -1, 64))
			}
			ds.write(rec...)
		}
	}
	ds.close()

	type timing struct {
		Profiles        int     `json:"profiles"`
		Seeds           int     `json:"seeds"`
		TrainVectors    int     `json:"train_vectors"`
		TestVectors     int     `json:"test_vectors"`
		TrainSeconds    float64 `json:"train_seconds_per_forest"`
		ObserveNs       float64 `json:"observe_ns_per_vector_including_retrains"`
		ScoreNs         float64 `json:"score_ns_per_vector"`
		ScoreVanillaNs  float64 `json:"score_vanilla_ns_per_vector"`
		ExplainNs       float64 `json:"explain_ns_per_vector"`
		GOMAXPROCS      int     `json:"gomaxprocs"`
		MeasuredAtLocal string  `json:"measured_at"`
	}
	tm := timing{Profiles: len(profiles), Seeds: benchSeeds, TrainVectors: trainLen, TestVectors: testLen, MeasuredAtLocal: time.Now().UTC().Format(time.RFC3339)}
	type hits struct{ First, Any, Total int }
	explain := map[string]*hits{}
	for _, a := range attacks {
		explain[a.kind] = &hits{}
	}

	sc := newCSV(t, filepath.Join(dir, "go_scores.csv"))
	sc.write("profile", "seed", "scoring", "index", "score")
	var trainDur, observeDur, scoreDur, vanillaDur, explainDur time.Duration
	var trains, observed, scored, explained int
	for _, p := range profiles {
		samples := data[p.name]
		test := samples[trainLen:]
		for seed := uint64(1); seed <= benchSeeds; seed++ {
			m, err := New(Config{Window: trainLen, Seed: seed})
			require.NoError(t, err)
			start := time.Now()
			for _, s := range samples[:trainLen] {
				m.Observe(p.name, fromVector(s.v))
			}
			observeDur += time.Since(start)
			observed += trainLen

			start = time.Now()
			require.True(t, m.Train(p.name))
			trainDur += time.Since(start)
			trains++

			ks := m.state(p.name, false)
			forest := ks.forest
			for _, mode := range []Scoring{RangeAware, Vanilla} {
				scores := make([]float64, len(test))
				start = time.Now()
				for i, s := range test {
					scores[i] = forest.Score(s.v, mode)
				}
				if mode == RangeAware {
					scoreDur += time.Since(start)
					scored += len(test)
				} else {
					vanillaDur += time.Since(start)
				}
				for i, s := range scores {
					sc.write(p.name, strconv.FormatUint(seed, 10), mode.String(), strconv.Itoa(i), strconv.FormatFloat(s, 'g', -1, 64))
				}
			}

			start = time.Now()
			for _, s := range test {
				if s.kind == "" {
					continue
				}
				_, shares := forest.Explain(s.v, RangeAware)
				explained++
				names := top(shares)
				a := attacks[slices.IndexFunc(attacks, func(a attack) bool { return a.kind == s.kind })]
				h := explain[s.kind]
				h.Total++
				if len(names) > 0 && slices.ContainsFunc(a.expect, func(j int) bool { return Name(j) == names[0] }) {
					h.First++
				}
				if slices.ContainsFunc(names, func(n string) bool {
					return slices.ContainsFunc(a.expect, func(j int) bool { return Name(j) == n })
				}) {
					h.Any++
				}
			}
			explainDur += time.Since(start)
		}
	}
	sc.close()

	tm.TrainSeconds = trainDur.Seconds() / float64(trains)
	tm.ObserveNs = float64(observeDur.Nanoseconds()) / float64(observed)
	tm.ScoreNs = float64(scoreDur.Nanoseconds()) / float64(scored)
	tm.ScoreVanillaNs = float64(vanillaDur.Nanoseconds()) / float64(scored)
	tm.ExplainNs = float64(explainDur.Nanoseconds()) / float64(max(explained, 1))
	tm.GOMAXPROCS = runtime.GOMAXPROCS(0)
	writeJSON(t, filepath.Join(dir, "go_timing.json"), tm)
	writeJSON(t, filepath.Join(dir, "go_explain.json"), explain)
}

type csvFile struct {
	t  testing.TB
	f  *os.File
	cw *csv.Writer
}

func newCSV(t testing.TB, path string) *csvFile {
	f, err := os.Create(path)
	require.NoError(t, err)
	return &csvFile{t: t, f: f, cw: csv.NewWriter(f)}
}

func (c *csvFile) write(rec ...string) { require.NoError(c.t, c.cw.Write(rec)) }

func (c *csvFile) close() {
	c.cw.Flush()
	require.NoError(c.t, c.cw.Error())
	require.NoError(c.t, c.f.Close())
}

func writeJSON(t testing.TB, path string, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, append(b, '\n'), 0o644))
}
