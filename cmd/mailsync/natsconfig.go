package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"mailsync/handlers/registry"
	"mailsync/stream"
)

// natsConfigCmd writes the nkeys of mailsync's roles for an external NATS
// server and prints the server's authorization block for them: one
// listener key (for every host that runs a listener), one admin key (the
// command line), and a worker key per mail host, scoped to its consumers.
type natsConfigCmd struct {
	Dir   string   `required:"" type:"path" help:"Directory for the nkey seeds (created 0700; seeds 0600, reused when present)."`
	Hosts []string `name:"host" help:"A mail host (FQDN) running only handlers; repeat for each."`
}

func (c natsConfigCmd) Run(e *env) error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(c.Dir, 0o700); err != nil {
		return err
	}
	var users []stream.User
	add := func(role stream.Role, host, file string) error {
		kp, err := stream.LoadSeed(filepath.Join(c.Dir, file))
		if err != nil {
			return err
		}
		pub, _ := kp.PublicKey()
		users = append(users, stream.User{Role: role, Host: host, Handlers: registry.Known{}.Names(), Nkey: pub})
		return nil
	}
	if err := add(stream.RoleListener, "", "listener.nk"); err != nil {
		return err
	}
	if err := add(stream.RoleAdmin, "", "admin.nk"); err != nil {
		return err
	}
	for _, h := range c.Hosts {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" || strings.ContainsAny(h, " /") {
			return usageError{fmt.Errorf("--host: want a mail host's FQDN, got %q", h)}
		}
		if err := add(stream.RoleWorker, h, "worker-"+h+".nk"); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stdout, "# mailsync roles; seeds in %s\n%s", c.Dir, stream.ServerConfig(users))
	return nil
}
