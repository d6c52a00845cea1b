package anomaly

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"unsafe"
)

// Bounds of the forest parameters. MaxSampleSize keeps a node's sample count
// in 12 bits and a tree's node index in 16 bits (a tree has < 2ψ nodes).
const (
	MaxSampleSize = 4096
	MaxTrees      = 1000
)

// row is a vector as the trees see it: float32, like scikit-learn's trees, so
// that both cut the same data the same way.
type row = [NumFeatures]float32

// node is one node of a tree, 16 bytes. A tree is stored in pre-order, so an
// internal node's left child is the next node. A leaf is its own child
// (val −Inf, right 0, range ±Inf), so a walk of exactly the height limit
// steps ends on the leaf of every path without a branch.
type node struct {
	val float32 // split value: x[feat] < val goes left
	// lo and hi are the range of the split feature over the vectors that
	// reached the node (for RangeAware scoring).
	lo, hi float32
	right  uint16 // offset of the right child; 0 for a leaf
	// meta packs feat<<12 | (size-1): the split feature (0 for a leaf) and
	// the number of subsample vectors that reached the node.
	meta uint16
}

func (n *node) feat() int  { return int(n.meta >> 12) }
func (n *node) size() int  { return int(n.meta&0xFFF) + 1 }
func (n *node) leaf() bool { return n.right == 0 }
func leafNode(size int) node {
	inf := float32(math.Inf(1))
	return node{val: -inf, lo: -inf, hi: inf, meta: uint16(size - 1)}
}

// Forest is an Isolation Forest (Liu, Ting and Zhou, 2008). It is immutable
// once fitted and safe for concurrent use.
type Forest struct {
	nodes []node    // all trees, one after the other
	leaf  []float32 // by node: a leaf's path length, its depth + c(size)
	roots []int32   // index of each tree's root in nodes
	lg    []float64 // lg[n] = log2(n) for n ≤ psi (explanations)
	psi   int       // subsample size actually used
	limit int       // height limit, ceil(log2 psi)
	cpsi  float64   // c(psi), the normaliser of the score
}

// Fit grows trees isolation trees, each on psi vectors drawn without
// replacement from data (all of data if it has fewer), with a height limit
// of ceil(log2 psi). The same data, parameters and seed give the same forest.
// It returns nil if data is empty or trees < 1.
func Fit(data []Vector, trees, psi int, seed uint64) *Forest {
	rows := make([]row, len(data))
	for i, v := range data {
		rows[i] = toRow(v)
	}
	return fit(rows, trees, psi, rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)))
}

func fit(rows []row, trees, psi int, rng *rand.Rand) *Forest {
	if len(rows) == 0 || trees < 1 {
		return nil
	}
	psi = min(max(psi, 1), len(rows), MaxSampleSize)
	trees = min(trees, MaxTrees)
	b := builder{
		rows:  rows,
		rng:   rng,
		limit: int(math.Ceil(math.Log2(float64(max(psi, 2))))),
		perm:  make([]int32, len(rows)),
		idx:   make([]int32, psi),
		// Trees of ψ = 256 have ~180 nodes of the 2ψ−1 possible.
		nodes:  make([]node, 0, trees*psi*3/4),
		depths: make([]uint8, 0, trees*psi*3/4),
	}
	for i := range b.perm {
		b.perm[i] = int32(i)
	}
	f := &Forest{roots: make([]int32, trees), psi: psi, limit: b.limit, cpsi: avgPath(psi)}
	for t := range f.roots {
		// A partial Fisher-Yates shuffle of the persistent permutation
		// draws a uniform subsample without replacement.
		for i := range psi {
			j := i + rng.IntN(len(b.perm)-i)
			b.perm[i], b.perm[j] = b.perm[j], b.perm[i]
		}
		copy(b.idx, b.perm[:psi])
		f.roots[t] = int32(len(b.nodes))
		b.grow(b.idx, 0)
	}
	f.nodes = slices.Clone(b.nodes) // the forest lives long: no spare capacity
	f.leaf = make([]float32, len(f.nodes))
	for i, d := range b.depths {
		if n := &f.nodes[i]; n.leaf() {
			f.leaf[i] = float32(float64(d) + avgPath(n.size()))
		}
	}
	f.lg = make([]float64, psi+1)
	for n := 1; n <= psi; n++ {
		f.lg[n] = math.Log2(float64(n))
	}
	return f
}

type builder struct {
	rows   []row
	rng    *rand.Rand
	limit  int
	perm   []int32
	idx    []int32
	nodes  []node
	depths []uint8 // by node
}

func (b *builder) grow(idx []int32, depth int) {
	me := len(b.nodes)
	n := len(idx)
	b.nodes = append(b.nodes, leafNode(n))
	b.depths = append(b.depths, uint8(depth))
	if depth >= b.limit || n <= 1 {
		return
	}
	// Pick a feature uniformly among those not constant in this node, as
	// scikit-learn does; a node where all are constant is a leaf.
	order := [NumFeatures]int{0, 1, 2, 3, 4, 5, 6}
	for k := NumFeatures - 1; k >= 0; k-- {
		j := b.rng.IntN(k + 1)
		order[k], order[j] = order[j], order[k]
		f := order[k]
		lo, hi := b.rows[idx[0]][f], b.rows[idx[0]][f]
		for _, i := range idx[1:] {
			x := b.rows[i][f]
			lo, hi = min(lo, x), max(hi, x)
		}
		if lo == hi {
			continue
		}
		// A cut uniform in (lo, hi]: lo always goes left, hi right.
		split := float32(float64(lo) + b.rng.Float64()*(float64(hi)-float64(lo)))
		if split <= lo {
			split = math.Nextafter32(lo, hi)
		}
		l := 0
		for r := range idx {
			if b.rows[idx[r]][f] < split {
				idx[l], idx[r] = idx[r], idx[l]
				l++
			}
		}
		b.nodes[me] = node{val: split, lo: lo, hi: hi, meta: uint16(f)<<12 | uint16(n-1)}
		b.grow(idx[:l], depth+1)
		b.nodes[me].right = uint16(len(b.nodes) - me)
		b.grow(idx[l:], depth+1)
		return
	}
}

// avgPath is c(n), the average path length of an unsuccessful search in a
// binary search tree of n keys: the expected depth a point would still need
// to be isolated in a leaf holding n training vectors. Same definition as
// scikit-learn (H(i) approximated by ln(i) + Euler's constant).
func avgPath(n int) float64 {
	switch {
	case n <= 1:
		return 0
	case n == 2:
		return 1
	}
	x := float64(n)
	return 2*(math.Log(x-1)+0.5772156649015329) - 2*(x-1)/x
}

// sizeBytes is the memory the forest holds.
func (f *Forest) sizeBytes() int {
	return len(f.nodes)*int(unsafe.Sizeof(node{})) + len(f.leaf)*4 + len(f.roots)*4 + len(f.lg)*8
}

// SampleSize is the subsample size each tree was grown on.
func (f *Forest) SampleSize() int { return f.psi }

// Scoring chooses how a vector is scored.
type Scoring int

const (
	// RangeAware credits a vector lying outside the range a node's cut was
	// drawn from. Liu et al.'s trees are grown without the vector being
	// scored, so a CPU of 195% against a training range of 10–40% walks
	// exactly like 41%: the score saturates at the edge of the window. At
	// a node whose split feature ranged over [lo, hi], a vector x < lo (or
	// > hi) would, had it been in the subsample, have been cut off alone
	// with probability (lo−x)/(hi−x) (or (x−hi)/(x−lo)); otherwise the cut
	// falls in [lo, hi] as it did. The path length is the expectation over
	// these events along the stored path, so it equals Vanilla's for
	// vectors within every range and shortens as a vector goes further out.
	RangeAware Scoring = iota
	// Vanilla is the path length of Liu et al. and scikit-learn.
	Vanilla
)

func (m Scoring) String() string {
	switch m {
	case RangeAware:
		return "range-aware"
	case Vanilla:
		return "vanilla"
	}
	return "Scoring(" + strconv.Itoa(int(m)) + ")"
}

// Score is the anomaly score s(x) = 2^(−E[h(x)]/c(ψ)) in (0, 1]: close to 1
// for a vector isolated in few cuts, about 0.5 or below for an ordinary one.
func (f *Forest) Score(v Vector, mode Scoring) float64 {
	x := toRow(v)
	return f.score(f.pathSum(&x, mode))
}

func (f *Forest) score(pathSum float64) float64 {
	if f.cpsi == 0 {
		return 0.5 // a one-vector forest cannot tell anything apart
	}
	return math.Exp2(-pathSum / float64(len(f.roots)) / f.cpsi)
}

// pathSum is Σ h(x) over the trees. Trees are walked four at a time: the
// walks are independent chains of dependent loads, which the CPU overlaps.
func (f *Forest) pathSum(x *row, mode Scoring) float64 {
	var sum float64
	roots := f.roots
	t := 0
	if mode == Vanilla {
		for ; t+4 <= len(roots); t += 4 {
			i0, i1, i2, i3 := int(roots[t]), int(roots[t+1]), int(roots[t+2]), int(roots[t+3])
			for range f.limit {
				n0, n1, n2, n3 := &f.nodes[i0], &f.nodes[i1], &f.nodes[i2], &f.nodes[i3]
				i0 += step(x[n0.feat()], n0)
				i1 += step(x[n1.feat()], n1)
				i2 += step(x[n2.feat()], n2)
				i3 += step(x[n3.feat()], n3)
			}
			sum += float64(f.leaf[i0] + f.leaf[i1] + f.leaf[i2] + f.leaf[i3])
		}
		for ; t < len(roots); t++ {
			i := int(roots[t])
			for range f.limit {
				n := &f.nodes[i]
				i += step(x[n.feat()], n)
			}
			sum += float64(f.leaf[i])
		}
		return sum
	}
	for ; t+4 <= len(roots); t += 4 {
		w := [4]walk{{i: int(roots[t]), q: 1}, {i: int(roots[t+1]), q: 1}, {i: int(roots[t+2]), q: 1}, {i: int(roots[t+3]), q: 1}}
		for d := range f.limit {
			for k := range w {
				n := &f.nodes[w[k].i]
				v := x[n.feat()]
				// A branch: measured faster than a branch-free
				// division (never taken at a leaf).
				if v < n.lo || v > n.hi {
					w[k].cut(outside(v, n.lo, n.hi), d)
				}
				w[k].i += step(v, n)
			}
		}
		for _, w := range w {
			sum += float64(w.h + w.q*f.leaf[w.i])
		}
	}
	for ; t < len(roots); t++ {
		w := walk{i: int(roots[t]), q: 1}
		for d := range f.limit {
			n := &f.nodes[w.i]
			v := x[n.feat()]
			if v < n.lo || v > n.hi {
				w.cut(outside(v, n.lo, n.hi), d)
			}
			w.i += step(v, n)
		}
		sum += float64(w.h + w.q*f.leaf[w.i])
	}
	return sum
}

// walk is a RangeAware walk down one tree: at node i, with expected path
// length h so far from cuts that would have isolated x, which x has escaped
// with probability q.
type walk struct {
	i    int
	h, q float32
}

// cut accounts for x being cut off alone with probability p by the cut at
// depth d, isolating it at depth d+1.
func (w *walk) cut(p float64, d int) {
	w.h += w.q * float32(p) * float32(d+1)
	w.q *= 1 - float32(p)
}

// step is the offset of the child v goes to: 1 (left) if v < n.val, else
// n.right (0 at a leaf). It is branch-free, as the direction is a coin toss
// a branch predictor cannot learn: v−n.val is negative exactly when v <
// n.val (the difference of distinct floats is never 0, and at a leaf it is
// +Inf).
func step(v float32, n *node) int {
	lt := int(math.Float32bits(v-n.val) >> 31)
	return lt + (1-lt)*int(n.right)
}

// outside is the probability that a cut uniform over the range [lo, hi]
// extended to v falls between v and [lo, hi].
func outside(v, lo, hi float32) float64 {
	switch {
	case v < lo:
		return float64(lo-v) / (float64(hi) - float64(v))
	case v > hi:
		return float64(v-hi) / (float64(v) - float64(lo))
	}
	return 0
}

// Explain returns the score of v and each feature's share of what made v
// unusual.
//
// Along v's path in a tree, a cut on feature j at a node reached by n
// subsample vectors, which leaves v with m of them, tells log2(n/m) bits
// about v. A vector of the subsample reaching that node would learn, on
// average, the entropy of the cut, H = −Σ (k/n)·log2(k/n) over the two sides.
// The excess log2(n/m) − H is the surprise of the cut: near 0 on average for
// ordinary vectors (also for coarse, discrete features whose cuts are always
// informative), large when a cut sheds almost everything but v. With
// RangeAware scoring, a node where v lies outside the range adds the
// probability of being cut off alone times its log2(n) bits. Each feature's
// surprise is summed over all trees, negative sums count as 0, and shares
// are the sums divided by their total, so they sum to 1 (all zero if nothing
// was surprising). A vector unusual in one feature gets nearly all its
// surprise from cuts on that feature.
func (f *Forest) Explain(v Vector, mode Scoring) (score float64, shares Vector) {
	x := toRow(v)
	return f.explain(&x, mode)
}

func (f *Forest) explain(x *row, mode Scoring) (score float64, shares Vector) {
	var sum float64
	for _, r := range f.roots {
		i, depth := int(r), 0
		q := 1.0
		for {
			n := &f.nodes[i]
			if n.leaf() {
				sum += q * float64(f.leaf[i])
				break
			}
			ft := n.feat()
			v := x[ft]
			depth++
			size := n.size()
			if mode == RangeAware {
				if p := outside(v, n.lo, n.hi); p > 0 {
					sum += q * p * float64(depth)
					q *= 1 - p
					shares[ft] += p * f.lg[size]
				}
			}
			l := f.nodes[i+1].size()
			if v < n.val {
				i++
			} else {
				i += int(n.right)
			}
			// log2(size/m) − entropy of the cut, with
			// entropy = log2(size) − (l·log2 l + r·log2 r)/size.
			r := size - l
			shares[ft] += (float64(l)*f.lg[l]+float64(r)*f.lg[r])/float64(size) - f.lg[f.nodes[i].size()]
		}
	}
	var total float64
	for j, s := range shares {
		shares[j] = max(s, 0)
		total += shares[j]
	}
	if total > 0 {
		for j := range shares {
			shares[j] /= total
		}
	}
	return f.score(sum), shares
}

// toRow converts v to float32, NaN to 0 and beyond ±maxValue to ±maxValue,
// so that every comparison in a tree is meaningful.
func toRow(v Vector) row {
	var x row
	for j, f := range v {
		switch {
		case f != f:
		case f > maxValue:
			x[j] = maxValue
		case f < -maxValue:
			x[j] = -maxValue
		default:
			x[j] = float32(f)
		}
	}
	return x
}
