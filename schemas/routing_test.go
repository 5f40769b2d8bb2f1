package schemas

import (
	"errors"
	"testing"
)

func TestCheckRouting(t *testing.T) {
	p := PartitionFor("acme", 4)
	cases := []struct {
		name      string
		key       []byte
		partition int
		want      Code
	}{
		{"keyed, right partition", []byte("acme"), p, ""},
		{"no key", nil, p, CodeKeyMismatch},
		{"empty key", []byte{}, p, CodeKeyMismatch},
		{"another tenant's key", []byte("other"), p, CodeKeyMismatch},
		{"key differs in case", []byte("ACME"), p, CodeKeyMismatch},
		{"right key, wrong partition", []byte("acme"), (p + 1) % 4, CodeWrongPartition},
	}
	for _, c := range cases {
		err := CheckRouting(c.key, "acme", c.partition, 4)
		var ve *ValidationError
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (!errors.As(err, &ve) || ve.Code != c.want):
			t.Errorf("%s: got %v, want %s", c.name, err, c.want)
		}
	}
}

// Vectors from Kafka's Java client (Utils.murmur2 / DefaultPartitioner
// with toPositive): what a Java or franz-go publisher computes.
func TestMurmur2JavaVectors(t *testing.T) {
	for key, want := range map[string]uint32{
		"21":                         uint32(0xffffffff & -973932308),
		"foobar":                     uint32(0xffffffff & -790332482),
		"a-little-bit-long-string":   uint32(0xffffffff & -985981536),
		"a-little-bit-longer-string": uint32(0xffffffff & -1486304829),
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": uint32(0xffffffff & -58897971),
		"abc": uint32(479470107),
	} {
		if got := murmur2(key); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", key, int32(got), int32(want))
		}
	}
}
