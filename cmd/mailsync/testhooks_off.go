//go:build !mailsync_testhooks

package main

import (
	"github.com/rs/zerolog"

	"mailsync/handlers/mailbox"
)

// testHooks of the release build: none (see testhooks.go).
func testHooks(zerolog.Logger) mailbox.Hooks { return mailbox.Hooks{} }

// testProfiles of the release build: none (see testhooks.go).
func testProfiles() func() { return func() {} }
