package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// TunnelPackage is the gateway binary the harness runs as server and
// client when Options.Binary is empty. The harness is a command of its own
// (cmd/tunnel-bench) so that this binary links no load generator.
const TunnelPackage = "github.com/qtunnel/qtunnel/cmd/tunnel"

// BuildTunnel builds TunnelPackage with go build, from the module of the
// working directory (the repository), into dir/tunnel, and returns that
// path. It needs the go command on PATH.
func BuildTunnel(ctx context.Context, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "tunnel")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, TunnelPackage).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the tunnel binary (go build %s; run it in the qtunnel repository, or name a built binary): %w\n%s",
			TunnelPackage, err, bytes.TrimSpace(out))
	}
	return bin, nil
}
