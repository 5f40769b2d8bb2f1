package quota

import (
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"strconv"

	"github.com/shopspring/decimal"
)

// Amount is an exact non-negative quantity in nano-units (9 decimals): an
// unsigned 128-bit integer, so it holds every value of the contract
// (29 integer and 9 fractional digits, ClickHouse Decimal(38, 9)). Check
// works on Amounts rather than decimal.Decimal because decimal arithmetic
// allocates and Check must not.
type Amount struct{ hi, lo uint64 }

const nanosPerUnit = 1_000_000_000

// Units returns n whole units (n < 0 counts as 0).
func Units(n int64) Amount {
	if n <= 0 {
		return Amount{}
	}
	hi, lo := bits.Mul64(uint64(n), nanosPerUnit)
	return Amount{hi, lo}
}

// Nanos returns n nano-units.
func Nanos(n uint64) Amount { return Amount{lo: n} }

var errAmount = errors.New("not a non-negative decimal with at most 29 integer and 9 fractional digits")

// AmountOf converts an exact decimal. It fails for negative values and for
// more than 9 fractional digits (they cannot be counted exactly).
func AmountOf(d decimal.Decimal) (Amount, error) {
	if d.Sign() < 0 {
		return Amount{}, fmt.Errorf("%s: %w", d, errAmount)
	}
	// Fast path, no big.Int: a coefficient of at most 15 digits (NumDigits
	// does not allocate for those) and an exponent in [-9, 9].
	if exp := int(d.Exponent()); exp >= -9 && exp <= 9 && d.NumDigits() <= 15 {
		mult := uint64(1)
		for range exp + 9 {
			mult *= 10
		}
		hi, lo := bits.Mul64(uint64(d.CoefficientInt64()), mult)
		return Amount{hi, lo}, nil
	}
	shifted := d.Shift(9)
	if !shifted.Equal(shifted.Truncate(0)) {
		return Amount{}, fmt.Errorf("%s: %w", d, errAmount)
	}
	b := shifted.BigInt()
	if b.BitLen() > 128 || d.GreaterThanOrEqual(decimal.New(1, 29)) {
		return Amount{}, fmt.Errorf("%s: %w", d, errAmount)
	}
	var lo, hi big.Int
	lo.And(b, new(big.Int).SetUint64(^uint64(0)))
	hi.Rsh(b, 64)
	return Amount{hi: hi.Uint64(), lo: lo.Uint64()}, nil
}

// ParseAmount parses a decimal string such as "1" or "12.5".
func ParseAmount(s string) (Amount, error) {
	d, err := decimal.NewFromString(s)
	if err != nil {
		return Amount{}, fmt.Errorf("%q: %w", s, errAmount)
	}
	return AmountOf(d)
}

// Decimal returns a as a decimal.Decimal (allocates).
func (a Amount) Decimal() decimal.Decimal {
	if a.hi == 0 && a.lo < 1<<63 {
		return decimal.New(int64(a.lo), -9)
	}
	b := new(big.Int).SetUint64(a.hi)
	b.Lsh(b, 64).Or(b, new(big.Int).SetUint64(a.lo))
	return decimal.NewFromBigInt(b, -9)
}

// String is the decimal text, trailing zeros trimmed ("12.5").
func (a Amount) String() string { return string(a.AppendText(nil)) }

// AppendText appends the decimal text without allocating when a < 2^64
// nano-units (18 billion units), the usual case.
func (a Amount) AppendText(dst []byte) []byte {
	if a.hi != 0 {
		return append(dst, a.Decimal().String()...)
	}
	dst = strconv.AppendUint(dst, a.lo/nanosPerUnit, 10)
	frac := a.lo % nanosPerUnit
	if frac == 0 {
		return dst
	}
	var buf [9]byte
	for i := 8; i >= 0; i-- {
		buf[i] = byte('0' + frac%10)
		frac /= 10
	}
	n := 9
	for buf[n-1] == '0' {
		n--
	}
	dst = append(dst, '.')
	return append(dst, buf[:n]...)
}

// IsZero reports whether a is 0.
func (a Amount) IsZero() bool { return a.hi == 0 && a.lo == 0 }

// Add returns a+b, saturating at the largest Amount.
func (a Amount) Add(b Amount) Amount {
	lo, c := bits.Add64(a.lo, b.lo, 0)
	hi, c := bits.Add64(a.hi, b.hi, c)
	if c != 0 {
		return Amount{^uint64(0), ^uint64(0)}
	}
	return Amount{hi, lo}
}

// Sub returns a-b, or 0 when b > a.
func (a Amount) Sub(b Amount) Amount {
	lo, br := bits.Sub64(a.lo, b.lo, 0)
	hi, br := bits.Sub64(a.hi, b.hi, br)
	if br != 0 {
		return Amount{}
	}
	return Amount{hi, lo}
}

// Cmp returns -1, 0 or +1.
func (a Amount) Cmp(b Amount) int {
	switch {
	case a.hi < b.hi:
		return -1
	case a.hi > b.hi:
		return 1
	case a.lo < b.lo:
		return -1
	case a.lo > b.lo:
		return 1
	}
	return 0
}

// wholeUnits is a rounded up to whole units, for token buckets; it
// saturates at MaxInt.
func (a Amount) wholeUnits() int {
	if a.hi != 0 || a.lo > (1<<62) {
		return 1 << 62
	}
	return int((a.lo + nanosPerUnit - 1) / nanosPerUnit)
}

// basisPoints returns usage*10000/limit rounded half up (percent with 2
// decimals, as plans.Evaluate), without allocating when both fit in 64 bits.
func basisPoints(usage, limit Amount) int64 {
	if limit.IsZero() {
		if usage.IsZero() {
			return 0
		}
		return 10000
	}
	if usage.hi == 0 && limit.hi == 0 {
		hi, lo := bits.Mul64(usage.lo, 10000)
		if hi < limit.lo {
			q, r := bits.Div64(hi, lo, limit.lo)
			if r >= limit.lo-r { // r*2 >= limit without overflow
				q++
			}
			if q < 1<<62 {
				return int64(q)
			}
		}
	}
	p := usage.Decimal().Mul(decimal.NewFromInt(10000)).DivRound(limit.Decimal(), 0)
	if p.GreaterThan(decimal.NewFromInt(1 << 62)) {
		return 1 << 62
	}
	return p.IntPart()
}
