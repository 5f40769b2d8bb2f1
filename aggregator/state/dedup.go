package state

// dedup remembers the last n event ids of one partition. It is bounded by
// count, not time, so memory is bounded whatever the traffic; a duplicate
// older than the horizon is counted and later repaired by reconcile.
type dedup struct {
	ring []string // keys in arrival order, a circular buffer
	next int
	seen map[string]struct{}
}

func newDedup(n int) *dedup {
	return &dedup{ring: make([]string, 0, min(n, 1<<16)), seen: make(map[string]struct{}, min(n, 1<<16))}
}

// add records key and reports whether it was new.
func (d *dedup) add(key string, capacity int) bool {
	if _, ok := d.seen[key]; ok {
		return false
	}
	if len(d.ring) < capacity {
		d.ring = append(d.ring, key)
	} else {
		delete(d.seen, d.ring[d.next])
		d.ring[d.next] = key
		d.next = (d.next + 1) % capacity
	}
	d.seen[key] = struct{}{}
	return true
}
