package codec

import "fmt"

// MaxVarint is the largest value a QUIC variable-length integer can hold.
const MaxVarint = 1<<62 - 1

// VarintLen returns the number of bytes the minimal encoding of v takes:
// 1, 2, 4 or 8. It panics if v exceeds MaxVarint, which is a programming error.
func VarintLen(v uint64) int {
	switch {
	case v <= 63:
		return 1
	case v <= 16383:
		return 2
	case v <= 1073741823:
		return 4
	case v <= MaxVarint:
		return 8
	}
	panic(fmt.Sprintf("codec: varint %d out of range", v))
}

// AppendVarint appends the minimal QUIC varint encoding of v to b.
func AppendVarint(b []byte, v uint64) []byte {
	switch VarintLen(v) {
	case 1:
		return append(b, byte(v))
	case 2:
		return append(b, byte(v>>8)|0x40, byte(v))
	case 4:
		return append(b, byte(v>>24)|0x80, byte(v>>16), byte(v>>8), byte(v))
	default:
		return append(b, byte(v>>56)|0xc0, byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
}

// putVarint4 writes v into b[0:4] as a four-byte varint. v must be below 2^30.
func putVarint4(b []byte, v uint64) {
	_ = b[3]
	b[0] = byte(v>>24) | 0x80
	b[1] = byte(v >> 16)
	b[2] = byte(v >> 8)
	b[3] = byte(v)
}

// ParseVarint decodes a varint from the front of b. It returns the value and
// the number of bytes read, or ErrShort if b ends inside the integer.
func ParseVarint(b []byte) (uint64, int, error) {
	if len(b) == 0 {
		return 0, 0, ErrShort
	}
	n := 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, ErrShort
	}
	v := uint64(b[0] & 0x3f)
	for i := 1; i < n; i++ {
		v = v<<8 | uint64(b[i])
	}
	return v, n, nil
}
