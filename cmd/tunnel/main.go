// Command tunnel is the qtunnel gateway: one binary for both sides of the
// tunnel, the demo, and the tools around them.
//
//	tunnel server [--config] FILE
//	tunnel client [--config] FILE
//	tunnel demo [--public ADDR] [--forward ADDR] [--tunnel ADDR]
//	tunnel init [--dir DIR] ...
//	tunnel check-config [server|client] [--config] FILE
//	tunnel hash-token [--token-file FILE] (else the token on stdin)
//	tunnel version
//	tunnel completion bash|zsh|fish|powershell
//	tunnel help [COMMAND]
//
// The commands live in package app (cmd/tunnel/app), so that a gateway of
// your own is this main with your stage modules added (app.WithModules).
// The benchmark harness is a command of its own, cmd/tunnel-bench, so that
// this binary links no load generator (TestBinaryLinksNoLoadGenerator).
package main

import (
	"os"

	"github.com/qtunnel/qtunnel/cmd/tunnel/app"
)

func main() { os.Exit(app.Main(os.Args[1:])) }
