package testenv

import (
	"os"
	"slices"
	"strconv"
)

// Median returns the median of xs, which it sorts; benchmarks report it
// over several rounds because single runs on a shared machine swing by
// 15% or more.
func Median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// BenchRounds is the number of rounds a benchmark iteration alternates
// between mailsync and its baseline: MAILSYNC_BENCH_ROUNDS, default 5.
func BenchRounds() int {
	if v, err := strconv.Atoi(os.Getenv("MAILSYNC_BENCH_ROUNDS")); err == nil && v > 0 {
		return v
	}
	return 5
}
