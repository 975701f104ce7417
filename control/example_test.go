package control_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/pipeline"
)

// The server stores only the SHA-256 of each client's token.
func ExampleHashToken() {
	h := control.HashToken("tok")
	fmt.Println(h)
	back, err := control.ParseTokenHash(h.String())
	fmt.Println(back == h, err)
	// Output:
	// 1a7674eb4ee78df7e1ac439a93c3fa8e3c945784d4dec9fd8e3011738b2f1d62
	// true <nil>
}

func ExampleTokens_Check() {
	tokens := control.Tokens{"c1": control.HashToken("tok")}
	fmt.Println(tokens.Check("c1", "tok"))
	fmt.Println(tokens.Check("c1", "guess"))
	fmt.Println(tokens.Check("c2", "tok"))
	// Output:
	// true
	// false
	// false
}

// A client says HELLO on its control stream; the server checks it and
// answers HELLO_ACK, or REJECT when the token is wrong.
func ExampleHandshake() {
	tokens := control.Tokens{"c1": control.HashToken("tok")}
	for _, token := range []string{"tok", "guess"} {
		client, server := net.Pipe()
		done := make(chan error, 1)
		go func() {
			p, err := control.Handshake(context.Background(), server, tokens, time.Second)
			if err == nil {
				fmt.Printf("server: %s authenticated\n", p.Hello.ClientID)
				err = p.Accept(&codec.HelloAck{SessionID: "s-1", HashCheckInterval: 15 * time.Second})
			}
			done <- err
		}()
		cp, err := control.Hello(context.Background(), client, &codec.Hello{ClientID: "c1", Token: token}, time.Second)
		serr := <-done
		var rej *control.RejectedError
		switch {
		case err == nil:
			fmt.Printf("client: session %s, hash check every %v\n", cp.Ack.SessionID, cp.Ack.HashCheckInterval)
		case errors.As(err, &rej):
			fmt.Println("client:", rej)
			fmt.Println("server:", errors.Is(serr, control.ErrUnauthenticated))
		default:
			fmt.Println("error:", err)
		}
		_ = client.Close()
		_ = server.Close()
	}
	// Output:
	// server: c1 authenticated
	// client: session s-1, hash check every 15s
	// client: server rejected this client: unknown client id or invalid token
	// server: true
}

// A client that reconnects resumes its session; the server closes the
// connection it replaced.
func ExampleRegistry() {
	var reg control.Registry
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

	first := &pipeline.Conn{ClientID: "c1"}
	s, resumed, replaced := reg.Attach("c1", first, now)
	fmt.Println("resumed:", resumed, "replaced:", replaced != nil)

	second := &pipeline.Conn{ClientID: "c1"}
	_, resumed, replaced = reg.Attach("c1", second, now.Add(time.Second))
	fmt.Println("resumed:", resumed, "replaced first:", replaced == first)

	reg.Detach(s, first, now.Add(2*time.Second)) // stale: second stays
	fmt.Println("live conn is second:", reg.Conn("c1") == second)

	reg.Detach(s, second, now.Add(3*time.Second))
	fmt.Println("swept at ttl:", reg.Sweep(now.Add(3*time.Second+time.Minute), time.Minute))
	fmt.Println("swept after ttl:", reg.Sweep(now.Add(4*time.Second+time.Minute), time.Minute))
	// Output:
	// resumed: false replaced: false
	// resumed: true replaced first: true
	// live conn is second: true
	// swept at ttl: []
	// swept after ttl: [c1]
}
