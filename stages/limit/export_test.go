package limit

// InFlight returns how many exchanges are past the stage now. It counts
// only when MaxInFlight is set (it is 0 otherwise).
func InFlight(g *Guard) int { return int(g.inflight.Load()) }
