package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The Kubernetes example's policy, with its state.redis, passes check,
// and check names the shared backend; the password is the environment's
// (deployment.yaml), never the ConfigMap's.
func TestCheckKubernetesExampleState(t *testing.T) {
	b, err := os.ReadFile("../../examples/kubernetes/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	text := cm.Data["kmsproxy.yaml"]
	if text == "" || strings.Contains(text, "password:") {
		t.Fatalf("the ConfigMap's kmsproxy.yaml is missing or holds a password:\n%s", text)
	}
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KMSPROXY_STATE_REDIS_PASSWORD", "from-the-secret")
	out, err := runCLI(t, "check", "--config", path)
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	want := "state:       redis kmsproxy-redis.kmsproxy.svc.cluster.local:6379 (password from environment KMSPROXY_STATE_REDIS_PASSWORD, key prefix kmsproxy:, timeout 25ms, retry every 5s)"
	if !strings.Contains(out, want) || strings.Contains(out, "from-the-secret") {
		t.Errorf("check lacks %q (or shows the password):\n%s", want, out)
	}
}

// Without state.redis check says the state is each replica's own.
func TestCheckStateLocal(t *testing.T) {
	out, err := runCLI(t, "check", "--config", "../../examples/kmsproxy.yaml")
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	if !strings.Contains(out, "state:       local (per replica") {
		t.Errorf("check does not name the local state:\n%s", out)
	}
}
