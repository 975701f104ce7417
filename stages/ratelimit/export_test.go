package ratelimit

// TrackedIPs returns how many source addresses have a bucket now; it never
// exceeds MaxIPs.
func TrackedIPs(l *Limiter) int { return l.ips.len() }
