// Package anomaly scores container behaviour against what the same image
// usually does, with an Isolation Forest per image.
//
// # Features
//
// An observation is a Features vector of seven values (see Features for how
// the state tracker computes each from telemetry), in this fixed order:
// cpu_percent, memory_bytes, net_rx_bytes_per_sec, net_tx_bytes_per_sec,
// process_count, connection_count, new_process_rate. Names returns them.
//
// # Model
//
// An Isolation Forest (Liu, Ting and Zhou, "Isolation Forest", ICDM 2008)
// isolates vectors by random cuts: each of t = 100 trees is grown on ψ = 256
// vectors drawn without replacement, splitting on a random feature at a
// uniform value between its minimum and maximum in the node, down to a
// height limit of ceil(log2 ψ) = 8. Unusual vectors are separated from the
// rest in few cuts. The path length h(x) of a vector in a tree is the depth
// of its leaf plus c(n), the average path length of a binary search tree of
// the n vectors left in that leaf; the score is s(x) = 2^(−E[h(x)]/c(ψ)).
// This is the model of scikit-learn's IsolationForest (float32 cuts
// included; the random draws differ), and Scoring Vanilla scores like it:
// bench/anomaly shows the same ROC AUC on the same data (|Δ| ≤ 0.001) at a
// fraction of the cost.
//
// The default Scoring, RangeAware, adds one thing: a vector beyond the range
// a cut was drawn from is credited with the chance that the cut would have
// isolated it had it been in the subsample, so 400% CPU is more unusual than
// 41% when the window never exceeded 40% (Vanilla scores both alike). It
// never lengthens a path, and it raised the ROC AUC on every profile of the
// bench.
//
// # Rolling window
//
// Model keeps, per key (an image), a ring buffer of the last Window vectors
// (default 2048). The first forest is trained once MinTrain vectors (256)
// have arrived, then a new one every RetrainEvery vectors (256) or on demand
// with Train. Until the first forest a key scores 0 with Trained false.
// Training (≈3 ms on one core for the defaults) runs in the goroutine of the
// Observe that makes it due, outside every lock: other calls keep scoring
// with the previous forest. Memory is bounded: at most MaxKeys keys (LRU
// eviction), each ≈0.4 MB (a 2048-vector window in float32 and a forest of
// ~18 000 16-byte nodes). The window learns what it is shown: an attack that
// lasts longer than a good part of the window becomes normal.
//
// # Threshold
//
// Scores are in (0, 1]. Ordinary vectors score about 0.5 or less; a score
// well above 0.5 means the vector was isolated in fewer cuts than a typical
// one. The model does not decide; a rule does, e.g. anomaly_score >= 0.65.
// bench/anomaly/README.md lists false and true positive rates per threshold
// on its data set.
//
// # Explanation
//
// For a vector scoring at least ExplainAbove, Result.Top names the features
// that made it unusual, most unusual first, and Result.Shares gives each
// feature's share. Along the vector's path, each cut is credited to its
// feature with its surprise: the bits it told about the vector (log2 of the
// vectors before and after the cut) minus the bits it tells on average (the
// entropy of the cut); see Forest.Explain. Ordinary vectors spread their
// little surprise over all features; a vector with CPU far out gets nearly
// all of it from cuts on cpu_percent.
package anomaly
