package state

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkDedup is the dedup sets of a member that owns four partitions,
// full at the default horizon (200,000 keys each), taking new keys in
// turn: one look-up and one eviction per event, as in production.
//
//	go test -run '^$' -bench Dedup -benchtime 2000000x ./aggregator/state/
func BenchmarkDedup(b *testing.B) {
	const horizon, parts = 200_000, 4
	r := rand.New(rand.NewPCG(3, 4))
	sets := make([]*dedup, parts)
	for p := range sets {
		sets[p] = newDedup(horizon)
		for range horizon {
			sets[p].add(idHash{r.Uint64(), r.Uint64()}, horizon)
		}
	}
	keys := make([]idHash, 1<<16)
	for i := range keys {
		keys[i] = idHash{r.Uint64(), r.Uint64()}
	}
	b.ResetTimer()
	for i := range b.N {
		k := keys[i&(len(keys)-1)]
		k[1] += uint64(i) // a new key every time
		if !sets[i%parts].add(k, horizon) {
			b.Fatal("a new key taken for a duplicate")
		}
	}
}

// BenchmarkDedupFresh is the dedup sets of a member that just started on
// four partitions, taking b.N new keys in turn (the sets grow from empty;
// run with -benchtime 300000x, as in a 300,000-event pipeline run).
func BenchmarkDedupFresh(b *testing.B) {
	const horizon, parts = 200_000, 4
	r := rand.New(rand.NewPCG(5, 6))
	keys := make([]idHash, b.N)
	for i := range keys {
		keys[i] = idHash{r.Uint64(), r.Uint64()}
	}
	b.ResetTimer()
	sets := make([]*dedup, parts)
	for p := range sets {
		sets[p] = newDedup(horizon)
	}
	for i, k := range keys {
		if !sets[i%parts].add(k, horizon) {
			b.Fatal("a new key taken for a duplicate")
		}
	}
}
