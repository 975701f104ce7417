package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Size is a number of bytes. In YAML it is a whole number of bytes or a
// whole number with a binary unit: B, KiB, MiB or GiB (powers of 1024, so
// 64KiB is 65536).
//
// Decimal units (KB, MB, GB) are refused rather than guessed at: people
// write 10MB meaning 10,000,000 bytes as often as meaning 10MiB, and the
// difference matters here (max_frame_size must agree on both sides, and
// request_buffer must fit in it). The error says which binary unit was
// likely meant and how to write the decimal amount: "10MB" is refused
// with "did you mean 10MiB? ... for 10000000 bytes write 10000000". Units
// spelt in the wrong case or cut short (64kib, 10M) get the same hint.
type Size int64

var units = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1},
}

// ParseSize parses "64KiB", "10MiB", "4096".
func ParseSize(in string) (Size, error) {
	if n, ok := parseSize(in); ok {
		return n, nil
	}
	return 0, errors.New(notASize(in) + sizeHint(in))
}

func parseSize(in string) (Size, bool) {
	s := strings.TrimSpace(in)
	mult := int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, false
	}
	return Size(n * mult), true
}

func notASize(in string) string {
	return fmt.Sprintf("%q is not a size (such as 4096, 64KiB, 10MiB)", in)
}

// meantUnits maps units as people write them, lower-cased, to the unit
// they most likely meant.
var meantUnits = map[string]string{
	"k": "KiB", "kb": "KiB", "ki": "KiB", "kib": "KiB",
	"m": "MiB", "mb": "MiB", "mi": "MiB", "mib": "MiB",
	"g": "GiB", "gb": "GiB", "gi": "GiB", "gib": "GiB",
	"b": "B",
}

var decimalUnits = map[string]int64{"KB": 1e3, "MB": 1e6, "GB": 1e9}

// sizeHint returns, for a whole number with a unit spelt otherwise than
// ParseSize takes ("10MB", "64kib", "5k"), the size most likely meant, and
// for a decimal unit the number of bytes it would have been; else "".
func sizeHint(in string) string {
	s := strings.TrimSpace(in)
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if i <= 0 {
		return ""
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	meant, ok := meantUnits[strings.ToLower(unit)]
	if !ok {
		return ""
	}
	if _, ok := parseSize(num + meant); !ok {
		return "" // too large either way
	}
	hint := fmt.Sprintf(": did you mean %s%s?", num, meant)
	if mult, ok := decimalUnits[strings.ToUpper(unit)]; ok {
		if n, err := strconv.ParseInt(num, 10, 64); err == nil && n <= (1<<62)/mult {
			hint += fmt.Sprintf(" Units are powers of 1024; for %d bytes write %[1]d", n*mult)
		}
	}
	return hint
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		// A TypeError lets the decoder go on and report the file's other
		// problems too.
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	*s = v
	return nil
}

// String formats s with the largest binary unit that divides it.
func (s Size) String() string {
	switch {
	case s != 0 && s%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", s>>30)
	case s != 0 && s%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", s>>20)
	case s != 0 && s%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", s>>10)
	}
	return strconv.FormatInt(int64(s), 10)
}

// SizeLimit is a Size that can be turned off: in YAML an integer or a
// number with a unit as for Size, or "unlimited" or "off" (or any negative
// integer), which is stored as Unlimited.
type SizeLimit int64

// Unlimited is the value of a SizeLimit set to "unlimited".
const Unlimited SizeLimit = -1

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *SizeLimit) UnmarshalYAML(n *yaml.Node) error {
	v := strings.TrimSpace(n.Value)
	if strings.EqualFold(v, "unlimited") || strings.EqualFold(v, "off") {
		*s = Unlimited
		return nil
	}
	if i, err := strconv.ParseInt(v, 10, 64); err == nil && i < 0 {
		*s = Unlimited
		return nil
	}
	z, err := ParseSize(v)
	if err != nil {
		msg := fmt.Sprintf("%q is neither a size (such as 4096, 64KiB, 10MiB) nor unlimited", n.Value)
		if sizeHint(v) != "" {
			msg = err.Error() // "10MB": did you mean 10MiB?
		}
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
	}
	*s = SizeLimit(z)
	return nil
}

// String formats s as Size does, or "unlimited".
func (s SizeLimit) String() string {
	if s < 0 {
		return "unlimited"
	}
	return Size(s).String()
}

// Bytes returns the limit in bytes, 0 for unlimited: what the limit stage
// takes.
func (s SizeLimit) Bytes() int64 { return max(int64(s), 0) }
