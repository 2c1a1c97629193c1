package testenv

import (
	"os"
	"slices"
	"strconv"
	"sync"
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

// Parallel calls fn for 0..n-1 from workers goroutines, as a benchmark's
// clients do, and returns when every call has.
func Parallel(n, workers int, fn func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}
