package bench_test

import (
	"fmt"

	"github.com/qtunnel/qtunnel/bench"
)

// The quick options keep a spot check under a minute.
func ExampleQuick() {
	o := bench.Quick()
	fmt.Println(o.Duration, o.Runs, o.BulkSize>>20, "MiB")
	// Output: 1s 1 128 MiB
}
