package schemas

import (
	"encoding/binary"
	"math/big"
	"math/bits"
	"strconv"
	"strings"

	"github.com/shopspring/decimal"
)

// Fixed9 is an exact non-negative amount in units of 10^-9 (the scale of
// quantities and of ClickHouse's Decimal(38, 9)), as the 128-bit integer
// Hi*2^64 + Lo. It adds and compares without allocating, where a
// decimal.Decimal holds a big.Int. Every value from 0 to MaxFixed9
// (10^38 - 1 units, the largest Decimal(38, 9)) is below 2^127, so the sum
// of two such values never wraps 128 bits; Add still reports a carry, and
// callers bound totals with Cmp against MaxFixed9. Lo and Hi are also
// ClickHouse Decimal128's two little-endian 64-bit halves, in that order
// (AppendDecimal128). The zero value is 0.
type Fixed9 struct{ Hi, Lo uint64 }

// fixedScale is 10^9, one whole unit in Fixed9 units.
const fixedScale = 1_000_000_000

// maxFixed9 is 10^38 - 1 (TestFixed9Bounds holds it to that).
var maxFixed9 = Fixed9{Hi: 0x4b3b4ca85a86c47a, Lo: 0x098a223fffffffff}

// pow10u64 holds 10^0 .. 10^19, the powers of ten a uint64 holds.
var pow10u64 = func() (p [20]uint64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return p
}()

// MaxFixed9 returns the largest Decimal(38, 9) value, 10^38 - 1 units
// (99999999999999999999999999999.999999999).
func MaxFixed9() Fixed9 { return maxFixed9 }

// Fixed9Units returns n units of 10^-9.
func Fixed9Units(n uint64) Fixed9 { return Fixed9{Lo: n} }

// Fixed9FromDecimal converts d exactly, or reports false when it cannot:
// d is negative, has more than 9 fractional digits (after dropping
// trailing zeros), or is above MaxFixed9.
func Fixed9FromDecimal(d decimal.Decimal) (Fixed9, bool) {
	if d.Sign() < 0 {
		return Fixed9{}, false
	}
	// Fast path, every quantity of at most 18 digits: the coefficient fits
	// a uint64 and the shift 10^(9+exp) is a uint64.
	if e := int(d.Exponent()) + QuantityScale; e >= 0 && e < len(pow10u64) && d.NumDigits() <= 18 {
		hi, lo := bits.Mul64(uint64(d.CoefficientInt64()), pow10u64[e])
		f := Fixed9{hi, lo}
		return f, f.Cmp(maxFixed9) <= 0
	}
	s := d.Shift(QuantityScale)
	if !s.IsInteger() {
		return Fixed9{}, false
	}
	b := s.BigInt()
	if b.BitLen() > 128 {
		return Fixed9{}, false
	}
	lo := new(big.Int).And(b, new(big.Int).SetUint64(^uint64(0))).Uint64()
	f := Fixed9{new(big.Int).Rsh(b, 64).Uint64(), lo}
	return f, f.Cmp(maxFixed9) <= 0
}

// Decimal returns the exact value as a decimal with exponent -9.
func (f Fixed9) Decimal() decimal.Decimal {
	if f.Hi == 0 && f.Lo <= 1<<63-1 {
		return decimal.New(int64(f.Lo), -QuantityScale)
	}
	b := new(big.Int).SetUint64(f.Hi)
	b.Lsh(b, 64).Or(b, new(big.Int).SetUint64(f.Lo))
	return decimal.NewFromBigInt(b, -QuantityScale)
}

// Add returns f + g, and false when the sum carries out of 128 bits (never
// for two values up to MaxFixed9).
func (f Fixed9) Add(g Fixed9) (Fixed9, bool) {
	lo, c := bits.Add64(f.Lo, g.Lo, 0)
	hi, c := bits.Add64(f.Hi, g.Hi, c)
	return Fixed9{hi, lo}, c == 0
}

// Sub returns f - g, and false when g > f (the result is then meaningless).
func (f Fixed9) Sub(g Fixed9) (Fixed9, bool) {
	lo, b := bits.Sub64(f.Lo, g.Lo, 0)
	hi, b := bits.Sub64(f.Hi, g.Hi, b)
	return Fixed9{hi, lo}, b == 0
}

// Cmp returns -1, 0 or +1 as f is below, equal to or above g.
func (f Fixed9) Cmp(g Fixed9) int {
	switch {
	case f.Hi < g.Hi || f.Hi == g.Hi && f.Lo < g.Lo:
		return -1
	case f == g:
		return 0
	}
	return 1
}

// IsZero reports whether f is 0.
func (f Fixed9) IsZero() bool { return f == Fixed9{} }

// AppendDecimal128 appends f as ClickHouse's Decimal128 at scale 9 stores
// it: 16 bytes, little-endian (Lo first).
func (f Fixed9) AppendDecimal128(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, f.Lo)
	return binary.LittleEndian.AppendUint64(b, f.Hi)
}

// String returns the exact value as decimal.Decimal.String does: no
// exponent, no trailing fractional zeros ("12.5", "3", "0.000000001").
func (f Fixed9) String() string {
	if f.Hi >= fixedScale { // an integer part of more than 64 bits: rare
		return f.Decimal().String()
	}
	whole, frac := bits.Div64(f.Hi, f.Lo, fixedScale)
	s := strconv.FormatUint(whole, 10)
	if frac == 0 {
		return s
	}
	fs := strconv.FormatUint(frac+fixedScale, 10)[1:] // 9 digits, leading zeros kept
	return s + "." + strings.TrimRight(fs, "0")
}

// plainFixed9 reads text of the form \d{1,18}(\.\d{1,9})? into Fixed9,
// and reports false for any other text (a sign, an exponent, more digits).
func plainFixed9(s string) (Fixed9, bool) {
	var whole, frac uint64
	i := 0
	for i < len(s) && isDigit(s[i]) {
		whole = whole*10 + uint64(s[i]-'0')
		i++
	}
	if i == 0 || i > QuantityIntDigits {
		return Fixed9{}, false
	}
	n := 0
	if i < len(s) {
		if s[i] != '.' {
			return Fixed9{}, false
		}
		for i++; i < len(s); i++ {
			if !isDigit(s[i]) {
				return Fixed9{}, false
			}
			frac = frac*10 + uint64(s[i]-'0')
			n++
		}
		if n == 0 || n > QuantityScale {
			return Fixed9{}, false
		}
	}
	hi, lo := bits.Mul64(whole, fixedScale)
	lo, c := bits.Add64(lo, frac*pow10u64[QuantityScale-n], 0)
	return Fixed9{hi + c, lo}, true
}

// parseQuantityFixed is parseQuantity into Fixed9, with its verdicts: the
// usual plain texts are read directly, every other one through
// parseQuantity itself.
func parseQuantityFixed(q wireQuantity) (Fixed9, error) {
	switch q.kind {
	case quantityString:
		if isPlainDecimal(q.text, QuantityIntDigits, QuantityScale) {
			if f, ok := plainFixed9(q.text); ok {
				return f, nil
			}
		}
	case quantityNumber:
		// JSON's grammar has no leading zeros, so digits as written are
		// the value's digits; a sign, an exponent or trailing fractional
		// zeros past 9 take parseQuantity.
		if f, ok := plainFixed9(q.text); ok {
			return f, nil
		}
	}
	d, err := parseQuantity(q)
	if err != nil {
		return Fixed9{}, err
	}
	f, ok := Fixed9FromDecimal(d)
	if !ok { // parseQuantity accepts only values below 10^18 with 9 decimals
		return Fixed9{}, invalid(CodeInvalidQuantity, "quantity", "quantity %s does not fit Decimal(38, 9)", d)
	}
	return f, nil
}
