//go:build !race

package gateway

// raceDetector says the test binary was built with -race.
const raceDetector = false
