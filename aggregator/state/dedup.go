package state

import "hash/maphash"

// dedup remembers the last n event ids of one partition. It is bounded by
// count, not time, so memory is bounded whatever the traffic; a duplicate
// older than the horizon is counted and later repaired by reconcile.
//
// It keeps a 128-bit keyed hash of (tenant, id), not the strings: no
// allocation per event, and a set with no pointers, which the GC never
// scans (200,000 strings per partition were a large part of its work).
// The price is a false duplicate when a new event's hash equals one of
// the <= n hashes in the set: with two independent random 64-bit seeds
// (hash/maphash, fresh per process; the set is rebuilt from Kafka at
// every start, so hashes are never persisted or compared across
// processes) that is at most n / 2^128 per event, 6e-34 at n = 200,000,
// or one chance in 10^15 over 10^18 events: far below the rate at which
// hardware corrupts memory, which no exact set protects against either.
type dedup struct {
	ring []idHash // keys in arrival order, a circular buffer
	next int
	// seen maps a key's first half to its second: a uint64-keyed map is
	// Go's fast path (the [2]uint64 key went through the generic one, 15 %
	// of the aggregator's CPU). Two keys sharing a first half (about one
	// event in 10^14) go to extra, so the set stays exact in 128 bits.
	seen  map[uint64]uint64
	extra map[idHash]struct{}
}

// idHash is a 128-bit hash of an event's tenant and id.
type idHash [2]uint64

// idHasher hashes event ids for the dedup sets of one State (not safe
// for concurrent use: it reuses one buffer).
type idHasher struct {
	a, b maphash.Seed
	buf  []byte
}

func newIDHasher() *idHasher { return &idHasher{a: maphash.MakeSeed(), b: maphash.MakeSeed()} }

// sum hashes tenant and id; the length prefix keeps ("ab", "c") and
// ("a", "bc") apart.
func (h *idHasher) sum(tenant, id string) idHash {
	l := len(tenant)
	b := append(h.buf[:0], byte(l), byte(l>>8), byte(l>>16), byte(l>>24))
	b = append(append(b, tenant...), id...)
	h.buf = b
	return idHash{maphash.Bytes(h.a, b), maphash.Bytes(h.b, b)}
}

func newDedup(n int) *dedup {
	return &dedup{ring: make([]idHash, 0, min(n, 1<<16)), seen: make(map[uint64]uint64, min(n, 1<<16))}
}

// has reports whether key is in the set.
func (d *dedup) has(key idHash) bool {
	if v, ok := d.seen[key[0]]; ok && v == key[1] {
		return true
	}
	if len(d.extra) == 0 {
		return false
	}
	_, ok := d.extra[key] // its first half's slot may be free again: look anyway
	return ok
}

// put adds key, which is not in the set.
func (d *dedup) put(key idHash) {
	if _, taken := d.seen[key[0]]; !taken {
		d.seen[key[0]] = key[1]
		return
	}
	if d.extra == nil {
		d.extra = make(map[idHash]struct{})
	}
	d.extra[key] = struct{}{}
}

// drop removes key, which is in the set.
func (d *dedup) drop(key idHash) {
	if v, ok := d.seen[key[0]]; ok && v == key[1] {
		delete(d.seen, key[0])
		return
	}
	delete(d.extra, key)
}

// add records key and reports whether it was new.
func (d *dedup) add(key idHash, capacity int) bool {
	if d.has(key) {
		return false
	}
	if len(d.ring) < capacity {
		d.ring = append(d.ring, key)
	} else {
		d.drop(d.ring[d.next])
		d.ring[d.next] = key
		d.next = (d.next + 1) % capacity
	}
	d.put(key)
	return true
}
