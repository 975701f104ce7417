package demo_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/qtunnel/qtunnel/demo"
)

func freeAddr(network string) string {
	if network == "udp" {
		c, _ := net.ListenPacket("udp", "127.0.0.1:0")
		defer c.Close()
		return c.LocalAddr().String()
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	return ln.Addr().String()
}

// The demo in-process: one request through the reverse tunnel.
func ExampleStart() {
	d, err := demo.Start(context.Background(), demo.Options{
		Public: freeAddr("tcp"), Forward: freeAddr("tcp"), Tunnel: freeAddr("udp"),
	})
	if err != nil {
		panic(err)
	}
	defer d.Stop(context.Background())
	req, _ := http.NewRequest(http.MethodGet, "http://"+d.Server.PublicAddr().String()+"/hello", nil)
	req.Host = "app.demo.localhost"
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	fmt.Print(first)
	// Output: hello from the upstream near the client (reached by the reverse tunnel)
}
