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
	// slots is an open-addressing table over the ring (linear probing,
	// at most half full, backward-shift deletion: no tombstones). A slot
	// is 8 bytes: the key's first half with its low posBits replaced by
	// the key's ring position + 1 (0: a free slot). Its upper 40 bits
	// pick the home slot and reject nearly every other key at once; a
	// match is confirmed on the full 128-bit key in the ring, so the set
	// stays exact. Half the bytes of a table of whole keys: the four
	// tables of a member fit the last-level cache beside the rest (a
	// look-up is a cache or TLB miss in a table too large for it: the
	// dedup set's whole cost).
	slots []uint64
	mask  uint64
	n     int // keys in the set
}

// posBits is the room for a ring position in a slot: the horizon is at
// most 1<<posBits - 1 (Config.Validate in the service holds it there).
const posBits = 24

// MaxDedupHorizon is the largest dedup horizon a set holds.
const MaxDedupHorizon = 1<<posBits - 1

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

// newDedup makes a set for a horizon of n keys (at most MaxDedupHorizon)
// at its full size at once: growing it rehashed every key at each
// doubling. The ring fills in order, so only its used part is ever
// touched; the table's pages are touched as keys land on them. At the
// default horizon that is 4 MB of table and 3.2 MB of ring per partition.
func newDedup(n int) *dedup {
	size := 16
	for size < 2*n {
		size <<= 1
	}
	return &dedup{ring: make([]idHash, 0, n), slots: make([]uint64, size), mask: uint64(size - 1)}
}

// home is the slot where key's probe starts.
func (d *dedup) home(key idHash) uint64 { return key[0] >> posBits & d.mask }

// has reports whether key is in the set.
func (d *dedup) has(key idHash) bool {
	tag := key[0] >> posBits
	for i := d.home(key); ; i = (i + 1) & d.mask {
		sl := d.slots[i]
		if sl == 0 {
			return false
		}
		if sl>>posBits == tag && d.ring[sl&MaxDedupHorizon-1] == key {
			return true
		}
	}
}

// put adds key, which is not in the set, at ring position pos.
func (d *dedup) put(key idHash, pos int) {
	i := d.home(key)
	for d.slots[i] != 0 {
		i = (i + 1) & d.mask
	}
	d.slots[i] = key[0]&^MaxDedupHorizon | uint64(pos+1)
	d.n++
}

// drop removes the key at ring position pos. The slots after it in its
// cluster move back where their probes still find them.
func (d *dedup) drop(pos int) {
	want := uint64(pos + 1)
	i := d.home(d.ring[pos])
	for d.slots[i]&MaxDedupHorizon != want {
		i = (i + 1) & d.mask
	}
	d.n--
	for j := i; ; {
		j = (j + 1) & d.mask
		sl := d.slots[j]
		if sl == 0 {
			break
		}
		// sl may fill slot i unless its home lies in (i, j].
		if home := sl >> posBits & d.mask; (j-home)&d.mask >= (j-i)&d.mask {
			d.slots[i] = sl
			i = j
		}
	}
	d.slots[i] = 0
}

// len is how many keys the set holds.
func (d *dedup) len() int { return d.n }

// add records key and reports whether it was new; capacity is the
// horizon the set was made for.
func (d *dedup) add(key idHash, capacity int) bool {
	if d.has(key) {
		return false
	}
	pos := len(d.ring)
	if pos < capacity {
		d.ring = append(d.ring, key)
	} else {
		pos = d.next
		d.drop(pos)
		d.ring[pos] = key
		d.next = (d.next + 1) % capacity
	}
	d.put(key, pos)
	return true
}
