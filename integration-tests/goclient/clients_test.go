// Package goclient calls AutoCrane's three gRPC services through Go clients generated from
// proto/ (protoc-gen-go and protoc-gen-go-grpc, driven by buf; see buf.gen.yaml), the way a Go user
// of the API would: a post (WatchdogListener.PostWatchdog), a stream (VersionWatcher.WatchVersions,
// its first message) and a fetch (DataRepository.GetManifest and Fetch).
//
// The servers are started by the Rust test integration-tests/e2e/tests/go_clients.rs, which passes
// their addresses in the environment; a missing variable is a failure, never a skip.
package goclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	datav1 "github.com/autocrane/autocrane/gen/go/autocrane/data/v1"
	versionv1 "github.com/autocrane/autocrane/gen/go/autocrane/version/v1"
	watchdogv1 "github.com/autocrane/autocrane/gen/go/autocrane/watchdog/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
)

// env returns the variable's value; a missing or empty variable fails the test.
func env(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: this test runs against servers that integration-tests/e2e/tests/go_clients.rs starts (cargo test -p autocrane-e2e --test go_clients)", name)
	}
	return value
}

// dial opens a plaintext connection to host:port.
func dial(t *testing.T, address string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s): %v", address, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func timeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// directorySpec is a directory source whose sub-directories v<N> are its versions, polled every
// second.
func directorySpec(path string) *versionv1.SourceSpec {
	return &versionv1.SourceSpec{
		Upstream: &versionv1.SourceSpec_Directory{Directory: &versionv1.DirectorySource{Path: path}},
		Policy: &versionv1.VersionPolicy{Policy: &versionv1.VersionPolicy_Regex{Regex: &versionv1.RegexPolicy{
			Pattern: `v(?P<n>\d+)`,
			Capture: "n",
			Order:   versionv1.RegexOrder_REGEX_ORDER_NUMERIC,
		}}},
		PollInterval: durationpb.New(time.Second),
	}
}

// A post: PostWatchdog on an existing pod answers with the pod's health, the new watchdog in it.
func TestWatchdogListenerPost(t *testing.T) {
	address := env(t, "AUTOCRANE_GO_WATCHDOG_LISTENER")
	namespace, name, ok := strings.Cut(env(t, "AUTOCRANE_GO_POD"), "/")
	if !ok {
		t.Fatalf("AUTOCRANE_GO_POD must be <namespace>/<name>")
	}
	client := watchdogv1.NewWatchdogListenerClient(dial(t, address))
	response, err := client.PostWatchdog(timeout(t), &watchdogv1.PostWatchdogRequest{
		Pod:     &watchdogv1.PodRef{Namespace: namespace, Name: name},
		Name:    "go-client",
		Level:   watchdogv1.Level_LEVEL_ERROR,
		Message: "posted by a Go client",
		Ttl:     durationpb.New(10 * time.Minute),
	})
	if err != nil {
		t.Fatalf("PostWatchdog: %v", err)
	}
	health := response.GetPodHealth()
	if health.GetPod().GetName() != name || health.GetPod().GetNamespace() != namespace {
		t.Errorf("pod_health.pod = %v, want %s/%s", health.GetPod(), namespace, name)
	}
	if health.GetHealth() != watchdogv1.Health_HEALTH_ERROR {
		t.Errorf("pod_health.health = %v, want HEALTH_ERROR", health.GetHealth())
	}
	found := false
	for _, watchdog := range health.GetWatchdogs() {
		if watchdog.GetName() == "go-client" {
			found = true
			if watchdog.GetLevel() != watchdogv1.Level_LEVEL_ERROR || watchdog.GetMessage() != "posted by a Go client" {
				t.Errorf("watchdog = %v", watchdog)
			}
		}
	}
	if !found {
		t.Errorf("no watchdog go-client in %v", health.GetWatchdogs())
	}
}

// A stream: the first message of WatchVersions is a snapshot of the source, probed, with v2 (the
// newest of v1, v2) as its current version.
func TestVersionWatcherWatchVersions(t *testing.T) {
	address := env(t, "AUTOCRANE_GO_VERSION_WATCHER")
	dir := env(t, "AUTOCRANE_GO_DIRECTORY_SOURCE")
	client := versionv1.NewVersionWatcherClient(dial(t, address))
	stream, err := client.WatchVersions(timeout(t), &versionv1.WatchVersionsRequest{
		Sources: []*versionv1.SourceSpec{directorySpec(dir)},
	})
	if err != nil {
		t.Fatalf("WatchVersions: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("WatchVersions, first message: %v", err)
	}
	if !first.GetSnapshot() {
		t.Errorf("first message is not a snapshot: %v", first)
	}
	if first.GetResumeToken() == "" {
		t.Errorf("first message has no resume token: %v", first)
	}
	if len(first.GetSources()) != 1 {
		t.Fatalf("first message holds %d sources, want 1: %v", len(first.GetSources()), first)
	}
	source := first.GetSources()[0]
	if source.GetSourceId() == "" {
		t.Errorf("no source id: %v", source)
	}
	if source.GetStatus().GetHealth() != versionv1.SourceHealth_SOURCE_HEALTH_OK {
		t.Errorf("source health = %v, want OK: %v", source.GetStatus().GetHealth(), source)
	}
	if source.GetCurrent().GetName() != "v2" || source.GetVersionCount() != 2 {
		t.Errorf("current = %q of %d versions, want v2 of 2: %v", source.GetCurrent().GetName(), source.GetVersionCount(), source)
	}
}

// A fetch: the DataRepository tracks the directory source (following the VersionWatcher), syncs
// v2, and GetManifest and Fetch return its files, byte for byte what is on disk.
func TestDataRepositoryFetch(t *testing.T) {
	address := env(t, "AUTOCRANE_GO_DATA_REPOSITORY")
	dir := env(t, "AUTOCRANE_GO_DIRECTORY_SOURCE")
	ctx := timeout(t)
	client := datav1.NewDataRepositoryClient(dial(t, address))
	tracked, err := client.TrackSource(ctx, &datav1.TrackSourceRequest{Source: directorySpec(dir)})
	if err != nil {
		t.Fatalf("TrackSource: %v", err)
	}
	sourceID := tracked.GetSource().GetSourceId()
	if sourceID == "" {
		t.Fatalf("TrackSource returned no source id: %v", tracked)
	}

	// The repository syncs in the background: GetManifest answers once v2 is stored.
	var manifest *datav1.Manifest
	for manifest == nil {
		response, err := client.GetManifest(ctx, &datav1.GetManifestRequest{SourceId: sourceID, Version: "v2"})
		if err == nil {
			manifest = response.GetManifest()
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("v2 of %s never synced; last GetManifest error: %v", sourceID, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if manifest.GetSourceId() != sourceID || manifest.GetVersion() != "v2" || manifest.GetManifestDigest() == "" {
		t.Errorf("manifest header: %v", manifest)
	}
	want := map[string][]byte{} // digest -> content, from the files on disk
	for _, file := range manifest.GetFiles() {
		content, err := os.ReadFile(filepath.Join(dir, "v2", filepath.FromSlash(file.GetPath())))
		if err != nil {
			t.Fatalf("manifest lists %s: %v", file.GetPath(), err)
		}
		sum := sha256.Sum256(content)
		if digest := "sha256:" + hex.EncodeToString(sum[:]); digest != file.GetDigest() || uint64(len(content)) != file.GetSize() {
			t.Errorf("%s: manifest says %s (%d bytes), disk has %s (%d bytes)", file.GetPath(), file.GetDigest(), file.GetSize(), digest, len(content))
		}
		want[file.GetDigest()] = content
	}
	if len(manifest.GetFiles()) != 2 {
		t.Errorf("manifest lists %d files, want 2: %v", len(manifest.GetFiles()), manifest.GetFiles())
	}

	stream, err := client.Fetch(ctx, &datav1.FetchRequest{SourceId: sourceID, Version: "v2"})
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	got := map[string]*bytes.Buffer{}
	finished := map[string]bool{}
	var plan *datav1.FetchPlan
	for {
		message, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("Fetch stream: %v", err)
		}
		switch payload := message.GetPayload().(type) {
		case *datav1.FetchResponse_Plan:
			plan = payload.Plan
		case *datav1.FetchResponse_Chunk:
			chunk := payload.Chunk
			buffer := got[chunk.GetDigest()]
			if buffer == nil {
				buffer = &bytes.Buffer{}
				got[chunk.GetDigest()] = buffer
			}
			if uint64(buffer.Len()) != chunk.GetOffset() {
				t.Fatalf("chunk of %s at offset %d, have %d bytes", chunk.GetDigest(), chunk.GetOffset(), buffer.Len())
			}
			buffer.Write(chunk.GetData())
			if chunk.GetLast() {
				finished[chunk.GetDigest()] = true
			}
		}
	}
	if plan == nil || plan.GetBlobCount() != uint64(len(want)) {
		t.Errorf("plan = %v, want %d blobs", plan, len(want))
	}
	for digest, content := range want {
		if !finished[digest] || got[digest] == nil || !bytes.Equal(got[digest].Bytes(), content) {
			t.Errorf("blob %s: finished=%v, fetched %d bytes, want %d", digest, finished[digest], lenOf(got[digest]), len(content))
		}
	}
	if len(got) != len(want) {
		t.Errorf("fetched %d blobs, want %d", len(got), len(want))
	}
}

func lenOf(buffer *bytes.Buffer) int {
	if buffer == nil {
		return 0
	}
	return buffer.Len()
}
