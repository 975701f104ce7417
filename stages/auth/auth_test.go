package auth_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/auth"
	"github.com/qtunnel/qtunnel/stages/internal/stagetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// The users of testdata/users.htpasswd, and one more for the config.
const (
	aliceHash = "$2y$04$rj0JMkLFRHcChet.zsYEqOfmjZagIoggJzb5pyidnYCz.xqKWJILq" // wonderland
	bobHash   = "$2y$04$sUTy./WVoEK63/cA1H.MDeK28odczNfpNBbw5e8aMAWGtC8oFg/QO" // builder
	carolHash = "$2y$04$8aD7s3oGCt0LXLjyg/W8hOLln3o6lcfE/sZnFuJikORnMoehxq.IW" // s3cret
	usersFile = "testdata/users.htpasswd"
)

var (
	token1  = "tok-" + strings.Repeat("1", 40)
	token2  = "tok-" + strings.Repeat("2", 40)
	digest1 = control.HashToken(token1).String()
	digest2 = control.HashToken(token2).String()
)

var pass = pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })

// hashOf returns a cheap bcrypt hash of password.
func hashOf(t testing.TB, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	return string(h)
}

func newAuth(t testing.TB, c auth.Config) *auth.Stage {
	t.Helper()
	s, err := auth.New(c)
	require.NoError(t, err)
	require.Equal(t, auth.Name, s.Name())
	return s
}

func basic(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// result is what one request through the stage gave.
type result struct {
	reached   bool
	forwarded []string // the Authorization values the next stage saw
	reject    *pipeline.Reject
	err       error
}

// run sends a request with the given Authorization values through s.
func run(s *auth.Stage, authorization ...string) result {
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
	rec := httptest.NewRecorder()
	x.Writer = rec
	for _, v := range authorization {
		x.Request.Header.Add("Authorization", v)
	}
	var res result
	res.err = s.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		res.reached = true
		res.forwarded = x.Request.Header.Values("Authorization")
		return nil
	}))
	errors.As(res.err, &res.reject)
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 || len(rec.Header()) != 0 {
		panic("the stage wrote to x.Writer")
	}
	return res
}

// admitted asserts that the request passed.
func admitted(t *testing.T, s *auth.Stage, authorization ...string) result {
	t.Helper()
	res := run(s, authorization...)
	require.NoError(t, res.err, "%q", authorization)
	require.True(t, res.reached)
	return res
}

// refused asserts a proper 401 that did not reach the next stage, with
// cause want.
func refused(t *testing.T, s *auth.Stage, want error, authorization ...string) *pipeline.Reject {
	t.Helper()
	res := run(s, authorization...)
	require.False(t, res.reached, "%q must not reach the next stage", authorization)
	require.NotNil(t, res.reject, "%q: %v", authorization, res.err)
	require.Equal(t, http.StatusUnauthorized, res.reject.Status)
	require.Equal(t, "authentication required", res.reject.Message)
	require.NotEmpty(t, res.reject.Header.Values("WWW-Authenticate"))
	require.ErrorIs(t, res.err, want, "%q", authorization)
	return res.reject
}

func TestNew(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	empty := write("empty", "# nobody yet\n\n")
	badFile := write("bad", "alice:"+aliceHash+"\nbob\n# fine\nmallory:$apr1$x$y\ncarol:"+carolHash+"\n  alice:"+bobHash+"\n")
	dupFile := write("dup", "carol:"+carolHash+"\n")

	tests := []struct {
		name    string
		cfg     auth.Config
		wantErr string
	}{
		{"users", auth.Config{Basic: auth.BasicConfig{Users: []string{"carol:" + carolHash}}}, ""},
		{"users file", auth.Config{Basic: auth.BasicConfig{UsersFile: usersFile}}, ""},
		{"tokens", auth.Config{Bearer: auth.BearerConfig{TokensSHA256: []string{digest1, strings.ToUpper(digest2)}}}, ""},
		{"everything", auth.Config{Realm: "Zoë's staging", ForwardAuthorization: true,
			Basic:  auth.BasicConfig{Users: []string{"carol:" + carolHash}, UsersFile: usersFile},
			Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}}, ""},
		{"an empty file and a token", auth.Config{Basic: auth.BasicConfig{UsersFile: empty},
			Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}}, ""},

		{"zero value", auth.Config{}, "no credentials: set basic.users, basic.users_file or bearer.tokens_sha256"},
		{"realm with a quote", auth.Config{Realm: `a"b`, Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}}, `realm: "a\"b" must not hold`},
		{"realm with a newline", auth.Config{Realm: "a\nb", Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}}, `realm: "a\nb" must not hold`},
		{"realm not UTF-8", auth.Config{Realm: "a\xffb", Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}}, `realm: "a\xffb" is not valid UTF-8`},
		{"user line without a hash", auth.Config{Basic: auth.BasicConfig{Users: []string{"carol"}}}, `basic.users[0]: want "user:bcrypt-hash"`},
		{"user line without a user", auth.Config{Basic: auth.BasicConfig{Users: []string{":" + carolHash}}}, `basic.users[0]: want "user:bcrypt-hash"`},
		{"MD5 hash", auth.Config{Basic: auth.BasicConfig{Users: []string{"carol:$apr1$salt$hash"}}}, `basic.users[0]: user "carol": only bcrypt hashes`},
		{"SHA hash", auth.Config{Basic: auth.BasicConfig{Users: []string{"carol:{SHA}abc="}}}, `basic.users[0]: user "carol": only bcrypt hashes`},
		{"plain password", auth.Config{Basic: auth.BasicConfig{Users: []string{"carol:s3cret"}}}, `basic.users[0]: user "carol": only bcrypt hashes`},
		{"truncated bcrypt", auth.Config{Basic: auth.BasicConfig{Users: []string{"carol:" + carolHash[:20]}}}, `basic.users[0]: user "carol": malformed bcrypt hash`},
		{"user twice", auth.Config{Basic: auth.BasicConfig{Users: []string{"carol:" + carolHash, "dave:" + carolHash, "carol:" + aliceHash}}},
			`basic.users[2]: user "carol" is listed twice (also basic.users[0])`},
		{"short token digest", auth.Config{Bearer: auth.BearerConfig{TokensSHA256: []string{digest1[:60]}}}, "bearer.tokens_sha256[0]: want 64 hex digits"},
		{"token instead of digest", auth.Config{Bearer: auth.BearerConfig{TokensSHA256: []string{digest1, token1}}}, "bearer.tokens_sha256[1]: want 64 hex digits"},
		{"missing file", auth.Config{Basic: auth.BasicConfig{UsersFile: filepath.Join(dir, "nope")}}, "basic.users_file: open " + filepath.Join(dir, "nope")},
		{"empty file alone", auth.Config{Basic: auth.BasicConfig{UsersFile: empty}}, "basic.users_file: " + empty + " holds no user, and no other credentials are set"},
		{"user in the file and the config", auth.Config{Basic: auth.BasicConfig{Users: []string{"carol:" + carolHash}, UsersFile: dupFile}},
			"basic.users_file: " + dupFile + `:1: user "carol" is listed twice (also basic.users[0])`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := auth.New(tt.cfg)
			stagetest.CheckNew(t, auth.Name, s, err, tt.wantErr)
		})
	}

	t.Run("every problem of a file, with its line", func(t *testing.T) {
		t.Parallel()
		_, err := auth.New(auth.Config{Basic: auth.BasicConfig{UsersFile: badFile}})
		require.Error(t, err)
		require.Equal(t, "auth: basic.users_file: "+badFile+`:2: want "user:bcrypt-hash", as "htpasswd -nB user" prints it`+"\n"+
			"basic.users_file: "+badFile+`:4: user "mallory": only bcrypt hashes ($2y$..., from "htpasswd -B") are supported`+"\n"+
			"basic.users_file: "+badFile+`:6: user "alice" is listed twice (also `+badFile+`:1)`, err.Error())
	})
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	err := auth.Config{
		Realm:  `"quoted"`,
		Basic:  auth.BasicConfig{Users: []string{"carol:" + carolHash, "nohash", "md5:$apr1$a$b", "carol:" + carolHash}},
		Bearer: auth.BearerConfig{TokensSHA256: []string{"xyz"}},
	}.Validate()
	require.Error(t, err)
	require.Equal(t, `realm: "\"quoted\"" must not hold '"', '\' or control characters`+"\n"+
		`basic.users[1]: want "user:bcrypt-hash", as "htpasswd -nB user" prints it`+"\n"+
		`basic.users[2]: user "md5": only bcrypt hashes ($2y$..., from "htpasswd -B") are supported`+"\n"+
		`basic.users[3]: user "carol" is listed twice (also basic.users[0])`+"\n"+
		`bearer.tokens_sha256[0]: want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')`, err.Error())
}

// Validate checks the settings only: the file is New's.
func TestValidateDoesNotReadTheFile(t *testing.T) {
	t.Parallel()
	c := auth.Config{Basic: auth.BasicConfig{UsersFile: "testdata/does-not-exist"}}
	require.NoError(t, c.Validate())
	_, err := auth.New(c)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestBasic(t *testing.T) {
	t.Parallel()
	s := newAuth(t, auth.Config{Basic: auth.BasicConfig{
		Users:     []string{"carol:" + carolHash, "dan:" + hashOf(t, "pa:ss wörd"), "ed:" + hashOf(t, "")},
		UsersFile: usersFile,
	}})
	admitted(t, s, basic("alice", "wonderland")) // from the file
	admitted(t, s, basic("bob", "builder"))      // from the file, indented, CRLF
	admitted(t, s, basic("carol", "s3cret"))     // from the config
	admitted(t, s, basic("dan", "pa:ss wörd"))   // the password may hold ':'
	admitted(t, s, basic("ed", ""))              // an empty password, if that is the hash's
	admitted(t, s, "basic "+base64.StdEncoding.EncodeToString([]byte("alice:wonderland")))
	admitted(t, s, "BASIC    "+base64.StdEncoding.EncodeToString([]byte("alice:wonderland"))+" ")

	for _, v := range []string{
		basic("alice", "Wonderland"),
		basic("alice", "wonderland "),
		basic("alice", "builder"),      // bob's password
		basic("Alice", "wonderland"),   // user names are case-sensitive
		basic("mallory", "wonderland"), // unknown user with a known password
		basic("mallory", ""),
		basic("", "wonderland"),
		basic("carol", ""),
		basic("alice:wonderland", ""), // the user ends at the first ':'
	} {
		refused(t, s, auth.ErrInvalid, v)
	}
	for _, v := range []string{
		"Basic !!!not-base64!!!",
		"Basic " + base64.StdEncoding.EncodeToString([]byte("alice-wonderland")),     // no ':'
		"Basic " + base64.RawStdEncoding.EncodeToString([]byte("alice:wonderland1")), // no padding
	} {
		refused(t, s, auth.ErrInvalid, v)
	}
	for _, v := range []string{
		"",
		"Basic",
		"Basic ",
		"Bearer " + token1, // not configured
		"Digest username=\"alice\"",
		"alice:wonderland",
	} {
		refused(t, s, auth.ErrMissing, v)
	}
	refused(t, s, auth.ErrMissing) // no field at all
	// Two fields are ambiguous, even if both are right.
	refused(t, s, auth.ErrMissing, basic("alice", "wonderland"), basic("alice", "wonderland"))
}

func TestBearer(t *testing.T) {
	t.Parallel()
	s := newAuth(t, auth.Config{Bearer: auth.BearerConfig{TokensSHA256: []string{digest1, strings.ToUpper(digest2)}}})
	admitted(t, s, "Bearer "+token1)
	admitted(t, s, "bearer "+token2)
	admitted(t, s, "Bearer   "+token1+"  ")
	for _, v := range []string{
		"Bearer " + token1 + "x",
		"Bearer " + token1[:len(token1)-1],
		"Bearer " + digest1, // the digest is not the token
		"Bearer " + strings.ToUpper(token1),
	} {
		refused(t, s, auth.ErrInvalid, v)
	}
	refused(t, s, auth.ErrMissing, basic("alice", "wonderland")) // Basic is not configured
	refused(t, s, auth.ErrMissing, "Bearer")
	refused(t, s, auth.ErrMissing, token1)
}

// Credentials longer than the stage's stack buffers are checked all the
// same.
func TestLongCredentials(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("u", 2000)
	longToken := strings.Repeat("t", 5000)
	s := newAuth(t, auth.Config{
		Basic:  auth.BasicConfig{Users: []string{long + ":" + hashOf(t, "pw")}},
		Bearer: auth.BearerConfig{TokensSHA256: []string{control.HashToken(longToken).String()}},
	})
	for range 2 { // checked, then cached
		admitted(t, s, basic(long, "pw"))
	}
	refused(t, s, auth.ErrInvalid, basic(long, "pW"))
	refused(t, s, auth.ErrInvalid, basic(long+"u", "pw"))
	admitted(t, s, "Bearer "+longToken)
	refused(t, s, auth.ErrInvalid, "Bearer "+longToken+"t")
}

func TestChallenge(t *testing.T) {
	t.Parallel()
	users := auth.BasicConfig{Users: []string{"carol:" + carolHash}}
	tokens := auth.BearerConfig{TokensSHA256: []string{digest1}}
	tests := []struct {
		name string
		cfg  auth.Config
		want []string
	}{
		{"basic, default realm", auth.Config{Basic: users}, []string{`Basic realm="qtunnel", charset="UTF-8"`}},
		{"bearer", auth.Config{Realm: "api", Bearer: tokens}, []string{`Bearer realm="api"`}},
		{"both", auth.Config{Realm: "Zoë's place", Basic: users, Bearer: tokens},
			[]string{`Basic realm="Zoë's place", charset="UTF-8"`, `Bearer realm="Zoë's place"`}},
		{"bearer, and a file of no user", auth.Config{Basic: auth.BasicConfig{UsersFile: os.DevNull}, Bearer: tokens},
			[]string{`Bearer realm="qtunnel"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newAuth(t, tt.cfg)
			rj := refused(t, s, auth.ErrMissing)
			require.Equal(t, http.Header{"Www-Authenticate": tt.want}, rj.Header)
			for _, v := range []string{"Bearer nope", "Basic bm9wZTpub3Bl"} { // wrong or unconfigured: the same answer
				res := run(s, v)
				require.NotNil(t, res.reject)
				require.Equal(t, tt.want, res.reject.Header.Values("WWW-Authenticate"))
			}
		})
	}
}

// Each refusal has its own header map: editing one does not edit the
// next, even by appending to the shared values.
func TestRefusalHeadersAreIndependent(t *testing.T) {
	t.Parallel()
	s := newAuth(t, auth.Config{Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}})
	first := refused(t, s, auth.ErrMissing)
	first.Header.Add("WWW-Authenticate", `Negotiate`)
	first.Header.Set("X-Extra", "1")
	second := refused(t, s, auth.ErrMissing)
	require.Equal(t, http.Header{"Www-Authenticate": {`Bearer realm="qtunnel"`}}, second.Header)
}

func TestAuthorizationIsRemoved(t *testing.T) {
	t.Parallel()
	c := auth.Config{Basic: auth.BasicConfig{UsersFile: usersFile}, Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}}
	s := newAuth(t, c)
	require.Empty(t, admitted(t, s, basic("alice", "wonderland")).forwarded)
	require.Empty(t, admitted(t, s, "Bearer "+token1).forwarded)

	c.ForwardAuthorization = true
	s = newAuth(t, c)
	require.Equal(t, []string{basic("alice", "wonderland")}, admitted(t, s, basic("alice", "wonderland")).forwarded)
	require.Equal(t, []string{"Bearer " + token1}, admitted(t, s, "Bearer "+token1).forwarded)
}

// Other fields, the proxy's credentials among them, go on untouched.
func TestOtherFieldsAreKept(t *testing.T) {
	t.Parallel()
	s := newAuth(t, auth.Config{Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}})
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	x.Request.Header.Set("Authorization", "Bearer "+token1)
	x.Request.Header.Set("Proxy-Authorization", "Basic eDp5")
	x.Request.Header.Set("Cookie", "a=b")
	require.NoError(t, s.Handle(context.Background(), x, pass))
	require.Equal(t, http.Header{"Proxy-Authorization": {"Basic eDp5"}, "Cookie": {"a=b"}}, x.Request.Header)
}

// The credentials admitted once are remembered: a wrong password for the
// same user is still checked, and still refused.
func TestCacheNeverAdmitsAWrongPassword(t *testing.T) {
	t.Parallel()
	s := newAuth(t, auth.Config{Basic: auth.BasicConfig{UsersFile: usersFile}})
	for range 3 {
		admitted(t, s, basic("alice", "wonderland"))
		refused(t, s, auth.ErrInvalid, basic("alice", "wonderlan"))
		refused(t, s, auth.ErrInvalid, basic("alice", "wonderland!"))
		refused(t, s, auth.ErrInvalid, basic("bob", "wonderland"))
		refused(t, s, auth.ErrInvalid, basic("mallory", "wonderland"))
	}
	// Another stage (a reload) shares nothing.
	other := newAuth(t, auth.Config{Basic: auth.BasicConfig{Users: []string{"alice:" + hashOf(t, "new password")}}})
	refused(t, other, auth.ErrInvalid, basic("alice", "wonderland"))
	admitted(t, other, basic("alice", "new password"))
}

func TestNextError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	s := newAuth(t, auth.Config{Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}})
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	x.Request.Header.Set("Authorization", "Bearer "+token1)
	err := s.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return boom }))
	require.Same(t, boom, err)
}

// An exchange without a request (not HTTP) is refused: the stage fails
// closed.
func TestNoRequest(t *testing.T) {
	t.Parallel()
	s := newAuth(t, auth.Config{Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}}})
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	err := s.Handle(context.Background(), x, pass)
	require.ErrorIs(t, err, auth.ErrMissing)
	status, _, _ := pipeline.Answer(err)
	require.Equal(t, http.StatusUnauthorized, status)
}

func TestModule(t *testing.T) {
	t.Parallel()
	require.Equal(t, auth.Name, auth.Module.Name)
	require.Equal(t, pipeline.HTTPProtocols, auth.Module.Protocols)
	require.False(t, auth.Module.Protocols.Has(pipeline.ProtoTCP))

	t.Run("decode fills the config", func(t *testing.T) {
		st, err := auth.Module.New(func(v any) error {
			c, ok := v.(*auth.Config)
			require.True(t, ok, "decode gets a *Config, not %T", v)
			c.Basic.UsersFile = usersFile
			return nil
		})
		require.NoError(t, err)
		s, ok := st.(*auth.Stage)
		require.True(t, ok)
		admitted(t, s, basic("bob", "builder"))
		refused(t, s, auth.ErrInvalid, basic("bob", "wonderland"))
	})
	t.Run("no settings: refused, no user", func(t *testing.T) {
		st, err := auth.Module.New(func(any) error { return nil })
		require.EqualError(t, err, "auth: no credentials: set basic.users, basic.users_file or bearer.tokens_sha256")
		require.Nil(t, st, "no typed nil in the interface")
	})
	t.Run("decode fails", func(t *testing.T) {
		bad := errors.New(`line 7: field "tokens" not found in type auth.BearerConfig`)
		st, err := auth.Module.New(func(any) error { return bad })
		require.ErrorIs(t, err, bad)
		require.EqualError(t, err, "auth: "+bad.Error())
		require.Nil(t, st, "no typed nil in the interface")
	})
	t.Run("through a registry", func(t *testing.T) {
		var r pipeline.Registry
		require.NoError(t, r.Register(auth.Module))
		st, err := r.Build(auth.Name, func(v any) error {
			v.(*auth.Config).Bearer.TokensSHA256 = []string{digest1}
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, auth.Name, st.(pipeline.Namer).Name())
		_, err = r.Build(auth.Name, nil)
		require.ErrorContains(t, err, `pipeline: stage "auth": auth: no credentials`)
	})
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	s := newAuth(t, auth.Config{
		Basic:  auth.BasicConfig{UsersFile: usersFile, Users: []string{"carol:" + carolHash}},
		Bearer: auth.BearerConfig{TokensSHA256: []string{digest1}},
	})
	type try struct {
		authorization string
		ok            bool
	}
	tries := []try{
		{basic("alice", "wonderland"), true}, {basic("bob", "builder"), true}, {basic("carol", "s3cret"), true},
		{basic("alice", "builder"), false}, {basic("carol", "S3cret"), false}, {basic("eve", "s3cret"), false},
		{"Bearer " + token1, true}, {"Bearer " + token2, false}, {"", false},
	}
	var admittedN atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 60 {
				tr := tries[(g+i)%len(tries)]
				var res result
				if tr.authorization == "" {
					res = run(s) // no field
				} else {
					res = run(s, tr.authorization)
				}
				if res.reached != tr.ok || (res.err == nil) != tr.ok || len(res.forwarded) != 0 {
					t.Errorf("%q: reached %v, err %v; want admitted %v", tr.authorization, res.reached, res.err, tr.ok)
					return
				}
				if tr.ok {
					admittedN.Add(1)
				}
			}
		})
	}
	wg.Wait()
	require.Positive(t, admittedN.Load())
}

// A request with known credentials allocates nothing: the cached Basic
// check and the token check.
func TestAdmittedPathDoesNotAllocate(t *testing.T) {
	for _, forward := range []bool{true, false} {
		s := newAuth(t, auth.Config{
			ForwardAuthorization: forward,
			Basic:                auth.BasicConfig{UsersFile: usersFile},
			Bearer:               auth.BearerConfig{TokensSHA256: []string{digest2, digest1}},
		})
		ctx := context.Background()
		for _, v := range []string{basic("alice", "wonderland"), "Bearer " + token1} {
			x := pipeline.Acquire(pipeline.Ingress)
			x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
			vals := []string{v}
			handle := func() {
				x.Request.Header["Authorization"] = vals
				if err := s.Handle(ctx, x, pass); err != nil {
					panic(err)
				}
			}
			handle() // caches the Basic credentials
			require.Zero(t, testing.AllocsPerRun(1000, handle), "forward %v, %s", forward, v)
			x.Release()
		}
	}
}

func benchStage(b *testing.B, cost int) *auth.Stage {
	h, err := bcrypt.GenerateFromPassword([]byte("wonderland"), cost)
	require.NoError(b, err)
	return newAuth(b, auth.Config{
		Basic:  auth.BasicConfig{Users: []string{"alice:" + string(h)}},
		Bearer: auth.BearerConfig{TokensSHA256: []string{digest2, digest1}},
	})
}

func bench(b *testing.B, s *auth.Stage, authorization string, wantOK bool) {
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	vals := []string{authorization}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		x.Request.Header["Authorization"] = vals
		if err := s.Handle(ctx, x, pass); (err == nil) != wantOK {
			b.Fatal(err)
		}
	}
}

// BenchmarkBasicCached is the common path: a user whose password was
// checked once already (bcrypt cost 10).
func BenchmarkBasicCached(b *testing.B) {
	bench(b, benchStage(b, bcrypt.DefaultCost), basic("alice", "wonderland"), true)
}

func BenchmarkBasicCachedParallel(b *testing.B) {
	s := benchStage(b, bcrypt.DefaultCost)
	v := basic("alice", "wonderland")
	require.NoError(b, run(s, v).err)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
		vals := []string{v}
		for pb.Next() {
			x.Request.Header["Authorization"] = vals
			if err := s.Handle(ctx, x, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBasicWrongPassword is what every wrong guess costs: a full
// bcrypt check at the default cost (10), never cached.
func BenchmarkBasicWrongPassword(b *testing.B) {
	bench(b, benchStage(b, bcrypt.DefaultCost), basic("alice", "guess"), false)
}

func BenchmarkBearer(b *testing.B) {
	bench(b, benchStage(b, bcrypt.MinCost), "Bearer "+token1, true)
}

// BenchmarkMissing is the 401 for a request without credentials.
func BenchmarkMissing(b *testing.B) {
	s := benchStage(b, bcrypt.MinCost)
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if s.Handle(ctx, x, pass) == nil {
			b.Fatal("admitted")
		}
	}
}
