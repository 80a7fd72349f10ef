package dedicated_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/fly/machines"
	"github.com/spaceport-sync/spaceport/router/dedicated"
)

// TestImageAuto: with the image "auto", a new space's machine runs the image of the backend app's most recently
// updated machine, so a deploy reaches new spaces with no change to the router; with no machine to take it from,
// creation fails as unavailable and leaves nothing behind.
func TestImageAuto(t *testing.T) {
	if testing.Short() {
		t.Skip("runs backend machines under flylocal")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*stackTimeout)
	defer cancel()
	s := openStack(ctx, t, time.Hour)
	dir, api := s.dir, s.api
	placer := func(image string) *dedicated.Placer {
		p, err := dedicated.New(dedicated.Config{Directory: dir, Machines: api, App: backendApp, Image: image,
			ImageRefresh: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	imageOf := func(space string) string {
		t.Helper()
		sp, err := dir.Lookup(ctx, space)
		if err != nil {
			t.Fatal(err)
		}
		m, err := api.Get(ctx, backendApp, sp.Machine)
		if err != nil {
			t.Fatal(err)
		}
		return m.Config.Image
	}
	auto := placer(dedicated.ImageAuto)

	// The app has no machine yet.
	if _, err := auto.CreateSpace(ctx, "first"); !errors.Is(err, dedicated.ErrMachineUnavailable) {
		t.Fatalf("auto image with no machine: %v, want ErrMachineUnavailable", err)
	}
	if _, err := dir.Lookup(ctx, "first"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("the refused space exists: %v", err)
	}

	if _, err := placer("registry.example/backend:v1").CreateSpace(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := auto.CreateSpace(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	if got := imageOf("s2"); got != "registry.example/backend:v1" {
		t.Fatalf("s2's machine runs %q, want the image of the app's machine, registry.example/backend:v1", got)
	}

	// A release rolls out: a machine of the app now runs v2, updated after every other one (the API's times
	// have whole seconds).
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))
	v2, err := api.Create(ctx, backendApp, machines.CreateRequest{Config: machines.MachineConfig{Image: "registry.example/backend:v2"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Wait(ctx, backendApp, v2.ID, machines.WaitRequest{State: machines.StateStarted, Timeout: stackTimeout}); err != nil {
		t.Fatal(err)
	}
	if _, err := auto.CreateSpace(ctx, "s3"); err != nil {
		t.Fatal(err)
	}
	if got := imageOf("s3"); got != "registry.example/backend:v2" {
		t.Fatalf("s3's machine runs %q, want the newest release, registry.example/backend:v2", got)
	}
}
