package state

import (
	"math/big"
	"math/bits"

	"github.com/shopspring/decimal"
)

// fixed is an exact non-negative amount in units of 10^-9, the scale of
// ClickHouse's Decimal(38, 9), as a 128-bit integer hi*2^64 + lo. Sums and
// counts fold in it without allocating (shopspring/decimal allocates a
// big.Int per Add). MaxValue is 10^38 - 1 units, below 2^127, so the sum
// of two values that each fit is below 2^128 and never wraps: overflow is
// caught by comparing with maxFixed before a sum is applied (see
// State.overflows), and add also reports a carry out of 128 bits.
type fixed struct{ hi, lo uint64 }

// scale is 10^9: one unit of a quantity in fixed units.
const scale = 1_000_000_000

var (
	fixedOne = fixed{lo: scale}
	// maxFixed is MaxValue in fixed units: 10^38 - 1 (TestFixedBounds
	// holds it to MaxValue).
	maxFixed = fixed{hi: 0x4b3b4ca85a86c47a, lo: 0x098a223fffffffff}
	// pow10 up to 10^19, the largest power of ten in a uint64.
	pow10 = func() (p [20]uint64) {
		p[0] = 1
		for i := 1; i < len(p); i++ {
			p[i] = p[i-1] * 10
		}
		return p
	}()
)

// fixedOf converts d exactly, or reports false when it cannot be: d is
// negative, has more than 9 fractional digits, or is above MaxValue.
func fixedOf(d decimal.Decimal) (fixed, bool) {
	if d.Sign() < 0 {
		return fixed{}, false
	}
	// Fast path, every contract-valid quantity with at most 18 digits:
	// coefficient c fits a uint64 and the shift 10^(9+exp) is a uint64.
	if e := int(d.Exponent()) + 9; e >= 0 && e < len(pow10) && d.NumDigits() <= 18 {
		hi, lo := bits.Mul64(uint64(d.CoefficientInt64()), pow10[e])
		f := fixed{hi, lo}
		return f, !maxFixed.less(f)
	}
	// Any other representation (trailing zeros past 9 digits, wide
	// coefficients): exact, through big.Int.
	s := d.Shift(9)
	if !s.IsInteger() {
		return fixed{}, false
	}
	b := s.BigInt()
	if b.BitLen() > 128 {
		return fixed{}, false
	}
	lo := new(big.Int).And(b, new(big.Int).SetUint64(^uint64(0))).Uint64()
	f := fixed{new(big.Int).Rsh(b, 64).Uint64(), lo}
	return f, !maxFixed.less(f)
}

// add returns a + b and false on a carry out of 128 bits.
func (a fixed) add(b fixed) (fixed, bool) {
	lo, c := bits.Add64(a.lo, b.lo, 0)
	hi, c := bits.Add64(a.hi, b.hi, c)
	return fixed{hi, lo}, c == 0
}

// sub returns a - b; callers guarantee b <= a.
func (a fixed) sub(b fixed) fixed {
	lo, borrow := bits.Sub64(a.lo, b.lo, 0)
	hi, _ := bits.Sub64(a.hi, b.hi, borrow)
	return fixed{hi, lo}
}

func (a fixed) less(b fixed) bool { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo) }

// decimal returns the exact decimal, at scale 9.
func (a fixed) decimal() decimal.Decimal {
	if a.hi == 0 && a.lo <= 1<<63-1 {
		return decimal.New(int64(a.lo), -9)
	}
	b := new(big.Int).SetUint64(a.hi)
	b.Lsh(b, 64).Or(b, new(big.Int).SetUint64(a.lo))
	return decimal.NewFromBigInt(b, -9)
}
