package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrNoToken is ReadTokenLine's error for an input without a token.
var ErrNoToken = errors.New("no token on standard input")

// ReadTokenLine reads a token from r, typed or piped: its first line
// without surrounding white space. An empty token is ErrNoToken.
func ReadTokenLine(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	token := strings.TrimSpace(line)
	if token == "" {
		return "", ErrNoToken
	}
	return token, nil
}

// ReadTokenFile reads a token from a file the way a client reads its
// token_file setting: the whole content without surrounding white space, so
// that the hash of what it returns is the hash of what the client sends. An
// empty file is an error.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("%s holds no token", path)
	}
	return token, nil
}
