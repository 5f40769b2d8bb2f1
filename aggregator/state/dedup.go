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
	// slots is an open-addressing table of the keys (linear probing from
	// the first half's low bits, which are already uniformly random; at
	// most half full). A look-up is one or two adjacent cache lines,
	// where Go's map took a directory, a table and a group (two to four
	// misses in a set of 4 x 200,000 keys, the dedup set's whole cost).
	// The zero key marks a free slot; the key {0, 0} itself is zero.
	slots []idHash
	mask  uint64
	n     int // keys in slots
	zero  bool
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

// newDedup makes a set for a horizon of n keys at its full size at once:
// growing it rehashed every key at each doubling (about 5 % of the
// aggregator's CPU in a 500,000-event run). The ring fills in order, so
// only its used part is ever touched; the table's pages are touched as
// keys land on them. At the default horizon that is 8 MB of table and
// 3.2 MB of ring per partition.
func newDedup(n int) *dedup {
	d := &dedup{ring: make([]idHash, 0, n)}
	d.resize(n)
	return d
}

// resize makes a table for n keys, at most half full, and puts the keys
// back.
func (d *dedup) resize(n int) {
	size := 16
	for size < 2*n {
		size <<= 1
	}
	old := d.slots
	d.slots, d.mask, d.n = make([]idHash, size), uint64(size-1), 0
	for _, k := range old {
		if k != (idHash{}) {
			d.put(k)
		}
	}
}

// find returns the slot holding key, or the free slot that ends its probe.
func (d *dedup) find(key idHash) (uint64, bool) {
	for i := key[0] & d.mask; ; i = (i + 1) & d.mask {
		switch d.slots[i] {
		case key:
			return i, true
		case idHash{}:
			return i, false
		}
	}
}

// has reports whether key is in the set.
func (d *dedup) has(key idHash) bool {
	if key == (idHash{}) {
		return d.zero
	}
	_, ok := d.find(key)
	return ok
}

// put adds key, which is not in the set.
func (d *dedup) put(key idHash) {
	if key == (idHash{}) {
		d.zero = true
		return
	}
	if 2*(d.n+1) > len(d.slots) {
		d.resize(d.n + 1)
	}
	i, _ := d.find(key)
	d.slots[i] = key
	d.n++
}

// drop removes key, which is in the set. The keys after it in its
// cluster move back where their probes still find them (no tombstones, so
// probes stay short however many keys come and go).
func (d *dedup) drop(key idHash) {
	if key == (idHash{}) {
		d.zero = false
		return
	}
	i, ok := d.find(key)
	if !ok {
		return
	}
	d.n--
	for j := i; ; {
		j = (j + 1) & d.mask
		k := d.slots[j]
		if k == (idHash{}) {
			break
		}
		// k may fill slot i unless its home lies in (i, j].
		if home := k[0] & d.mask; (j-home)&d.mask >= (j-i)&d.mask {
			d.slots[i] = k
			i = j
		}
	}
	d.slots[i] = idHash{}
}

// len is how many keys the set holds.
func (d *dedup) len() int {
	if d.zero {
		return d.n + 1
	}
	return d.n
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
