package producer

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/usagemeter/usagemeter/schemas"
)

// idClock hands each Publish call the time part of its UUIDv7 ids: the Unix
// millisecond and a 12-bit sub-millisecond fraction (256 ns steps), as
// google/uuid (schemas.NewID) makes them, and strictly later than the last
// call's, so that a publisher's ids only grow.
type idClock struct {
	last atomic.Int64 // ms<<12 | fraction of the last call
}

// next returns the time part for a call made at nano (Unix ns).
func (c *idClock) next(nano int64) int64 {
	t := nano/1e6<<12 | (nano%1e6)>>8
	for {
		old := c.last.Load()
		t := max(t, old+1)
		if c.last.CompareAndSwap(old, t) {
			return t
		}
	}
}

// idsPerString is how many ids share one string allocation; a kept id keeps
// at most idsPerString*36 bytes alive.
const idsPerString = 32

// fillIDs gives every event without an ID a UUIDv7 (RFC 9562). The ids of
// one call share the call's time part and count up in the 62-bit random
// part from one random start ("monotonic random", RFC 9562 6.2 method 2):
// one clock read and one 8-byte crypto/rand read per call instead of a
// lock, a clock read and 16 random bytes per id, and ids in creation order.
// Unique: within a publisher the time part grows from call to call; two
// calls elsewhere (another publisher or process) with the same 256 ns time
// part collide only if their random ranges overlap, under 2n/2^61 for n
// ids, against about n^2/2^62 for n random ids.
func (p *Publisher) fillIDs(events []schemas.UsageEvent, nano int64) error {
	missing := 0
	for i := range events {
		if events[i].ID == "" {
			missing++
		}
	}
	if missing == 0 {
		return nil
	}
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return fmt.Errorf("event ids: %w", err)
	}
	// Below 2^61, so start + missing stays within 62 bits.
	r := binary.BigEndian.Uint64(seed[:]) >> 3
	t := p.ids.next(nano)
	var head [16]byte
	binary.BigEndian.PutUint64(head[:8], uint64(t>>12)<<16|0x7000|uint64(t&0xfff))
	var buf [idsPerString * 36]byte
	for j := range idsPerString {
		// "xxxxxxxx-xxxx-7xxx-": the same for the whole call.
		appendHex(buf[j*36:j*36], head[:4])
		buf[j*36+8] = '-'
		appendHex(buf[j*36+9:j*36+9], head[4:6])
		buf[j*36+13] = '-'
		appendHex(buf[j*36+14:j*36+14], head[6:8])
		buf[j*36+18] = '-'
		buf[j*36+23] = '-'
	}
	n, next := 0, 0
	flush := func() {
		s := string(buf[:n*36])
		for j := range n {
			for events[next].ID != "" {
				next++
			}
			events[next].ID = s[j*36 : j*36+36]
		}
		n = 0
	}
	var tail [8]byte
	for range missing {
		binary.BigEndian.PutUint64(tail[:], r|1<<63) // variant 10
		r++
		id := buf[n*36 : n*36+36]
		appendHex(id[19:19], tail[:2])
		appendHex(id[24:24], tail[2:])
		if n++; n == idsPerString {
			flush()
		}
	}
	if n > 0 {
		flush()
	}
	return nil
}

const hexDigits = "0123456789abcdef"

// appendHex writes b in lowercase hex into dst's spare capacity.
func appendHex(dst, b []byte) []byte {
	for _, c := range b {
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return dst
}
