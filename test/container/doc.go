// Package container tests the kmsproxy container image for real: it builds
// the repository's Dockerfile with podman (no registry: the Go build image is
// imported from this machine's toolchain, the runtime base is scratch),
// checks the image config (user, entrypoint, command, environment, ports,
// health check) and its files, then runs the entrypoint with the image's own
// config, as the image's user, on a read-only root, in a private network
// namespace: a Windows activation goes through to a recording KMS host, a
// SAMR bind is refused with nothing reaching the host, the HEALTHCHECK
// command exits 0 while the proxy runs and 1 after it stopped.
//
//	go test ./test/container                                  # as root
//	KMSPROXY_CONTAINER_RUNNER=chroot go test ./test/container
//
// Where `podman run` works the proxy runs in a real container; where it does
// not (crun refusing this machine's cgroups or rlimits), the test unpacks
// the image with `podman image mount` and runs it chrooted with the image's
// numeric USER. KMSPROXY_CONTAINER_RUNNER=chroot|podman forces one.
//
// Needs root, podman (Debian: podman, which brings buildah, crun) and ip
// (iproute2). Missing podman is a failure, not a skip. It pulls and pushes
// nothing. The test package has no non-test code; this file only documents it.
package container
