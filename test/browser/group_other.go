//go:build !unix

package browser

import "os/exec"

// ownGroup does nothing where there are no Unix process groups; the
// browser tests run on Linux (CI), and the package builds elsewhere so
// that the suites importing it vet on every platform.
func ownGroup(*exec.Cmd) {}

// killGroup kills the browser process alone.
func killGroup(cmd *exec.Cmd) { cmd.Process.Kill() }
