// Command oidc-provider is the OpenID provider of the e2e suite: the example OP of
// github.com/zitadel/oidc/v3 (an OpenID-certified library), its storage and its own login
// form, with users and groups from a fixture file and one confidential web client for the
// portals. It serves HTTPS on loopback (the kube-apiserver accepts only https issuers).
//
//	oidc-provider -listen 127.0.0.1:PORT -issuer https://127.0.0.1:PORT -users users.json \
//	  -client-id hyperpage-portal -client-secret-file secret -cert tls.crt -key tls.key
//
// users.json maps a user ID to the example storage's User fields plus "Groups", which the
// ID token carries in its "groups" claim (with "email", the username claim).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// groupStorage adds the fixture's groups (and the email the API server uses as the
// username) to every ID token, whatever scopes the client asked for.
type groupStorage struct {
	*storage.Storage
	users    map[string]fixtureUser
	clientID string
	globs    []string
}

type fixtureUser struct {
	Email  string
	Groups []string
}

func (s *groupStorage) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, request op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, info, request, scopes); err != nil {
		return err
	}
	if user, ok := s.users[request.GetSubject()]; ok && slices.Contains(scopes, oidc.ScopeOpenID) {
		info.Email = user.Email
		info.EmailVerified = oidc.Bool(true)
		info.AppendClaims("groups", user.Groups)
	}
	return nil
}

// portalClient lets the portal's client use any loopback callback port: the tests start
// portals on free ports after the provider is up.
type portalClient struct {
	op.Client
	globs []string
}

func (c portalClient) RedirectURIGlobs() []string           { return c.globs }
func (c portalClient) PostLogoutRedirectURIGlobs() []string { return c.globs }

func (s *groupStorage) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	client, err := s.Storage.GetClientByClientID(ctx, id)
	if err != nil || id != s.clientID {
		return client, err
	}
	return portalClient{client, s.globs}, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:9998", "address to serve HTTPS on")
	issuer := flag.String("issuer", "", "issuer URL (https://host:port, as the API server is told)")
	users := flag.String("users", "", "users fixture (JSON)")
	clientID := flag.String("client-id", "hyperpage-portal", "the portals' client ID")
	secretFile := flag.String("client-secret-file", "", "file holding the client secret")
	cert := flag.String("cert", "", "TLS certificate")
	key := flag.String("key", "", "TLS key")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fail := func(msg string, err error) {
		logger.Error(msg, "error", err)
		os.Exit(1)
	}

	secret, err := os.ReadFile(*secretFile)
	if err != nil {
		fail("failed to read the client secret", err)
	}
	data, err := os.ReadFile(*users)
	if err != nil {
		fail("failed to read the users", err)
	}
	fixture := map[string]fixtureUser{}
	if err := json.Unmarshal(data, &fixture); err != nil {
		fail("failed to parse the users", err)
	}
	userStore, err := storage.StoreFromFile(*users)
	if err != nil {
		fail("failed to load the users", err)
	}
	callbacks := []string{"http://127.0.0.1:*/auth/callback", "http://localhost:*/auth/callback", "https://*/auth/callback"}
	client := storage.WebClient(*clientID, strings.TrimSpace(string(secret)), "http://127.0.0.1/auth/callback")
	clients := map[string]*storage.Client{*clientID: client}
	store := &groupStorage{Storage: storage.NewStorageWithClients(userStore, clients), users: fixture, clientID: *clientID, globs: callbacks}

	router := exampleop.SetupServer(strings.TrimSuffix(*issuer, "/"), store, logger, false)
	server := &http.Server{Addr: *listen, Handler: router, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	logger.Info("OpenID provider listening", "issuer", *issuer, "address", *listen)
	if err := server.ListenAndServeTLS(*cert, *key); err != http.ErrServerClosed {
		fail("server failed", err)
	}
}
