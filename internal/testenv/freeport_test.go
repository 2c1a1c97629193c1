package testenv

import "testing"

// Thousands of calls in one binary never repeat a port; without the record
// of ports handed out, the kernel's choices repeat within a few hundred.
func TestFreePortNeverRepeats(t *testing.T) {
	seen := map[int]bool{}
	for range 2000 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
