// Package deploy holds what ships qtunnel to real hosts, and its tests:
// systemd units in systemd/, checked here together with the release
// binaries of `make dist` and the container image of the repository's
// Dockerfile (docs/DEPLOY.md). It has no code to import.
package deploy
