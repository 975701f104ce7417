package config_test

import (
	"fmt"

	"github.com/qtunnel/qtunnel/config"
)

// ParseServer reports every problem of a file at once, each with its line
// and the path of the setting.
func ExampleParseServer() {
	// token_sha256 is the output of: printf c1-token | tunnel hash-token
	const doc = `clients:
  - id: c1
    token_sha256: 31a715934f18c17650412656c50480d0af6f8c8e1782af5a8c5fb247d03935be
rules:
  - id: web
    client: c1
    direction: reverse
    host: app.example.test
    upstream: http://127.0.0.1:3000
  - id: files
    client: c1
    direction: reverse
    host: files.example.test
    upstream: ftp://x
  - id: db
    client: c9
    direction: forward
    listen: 127.0.0.1:9000
    upstream: http://127.0.0.1:4000
`
	_, err := config.ParseServer("server.yaml", []byte(doc))
	fmt.Println(err)
	// Output:
	// server.yaml:14: rules[1].upstream: "ftp://x": scheme must be http or https
	// server.yaml:16: rules[2].client: client "c9" is not in clients
}

// Settings left out get their documented defaults.
func ExampleParseServer_defaults() {
	const doc = `clients:
  - id: c1
    token_sha256: 31a715934f18c17650412656c50480d0af6f8c8e1782af5a8c5fb247d03935be
`
	c, err := config.ParseServer("server.yaml", []byte(doc))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("listen:", c.Listen)
	fmt.Println("max frame size:", c.Limits.MaxFrameSize)
	fmt.Println("shutdown grace:", c.ShutdownGrace)
	fmt.Println("session ttl:", c.Sessions.TTL)
	// Output:
	// listen: :4443
	// max frame size: 64KiB
	// shutdown grace: 10s
	// session ttl: 5m0s
}

func ExampleParseSize() {
	for _, s := range []string{"4096", "64KiB", "10MiB", "10MB", "lots"} {
		n, err := config.ParseSize(s)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Printf("%s = %d bytes = %v\n", s, int64(n), n)
	}
	// Output:
	// 4096 = 4096 bytes = 4KiB
	// 64KiB = 65536 bytes = 64KiB
	// 10MiB = 10485760 bytes = 10MiB
	// error: "10MB" is not a size (such as 4096, 64KiB, 10MiB): did you mean 10MiB? Units are powers of 1024; for 10000000 bytes write 10000000
	// error: "lots" is not a size (such as 4096, 64KiB, 10MiB)
}

func ExampleProblem_Error() {
	p := config.Problem{File: "client.yaml", Line: 4, Path: "server_pin", Msg: "missing"}
	fmt.Println(p)
	// Output:
	// client.yaml:4: server_pin: missing
}
