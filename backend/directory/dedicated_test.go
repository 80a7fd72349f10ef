package directory_test

import (
	"context"
	"errors"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
)

// A dedicated machine holds its one space and is never chosen by shared
// placement, even when it is the emptiest live machine.
func TestCreateDedicatedSpace(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "shared-1")
	create(t, d, "s0")
	create(t, d, "s1")

	m := directory.Machine{ID: "ded-1", App: "app", Region: "local"}
	sp, err := d.CreateDedicatedSpace(ctx, "solo", m)
	if err != nil || sp.Machine != "ded-1" || sp.App != "app" {
		t.Fatalf("CreateDedicatedSpace = %+v, %v", sp, err)
	}
	if _, err := d.CreateDedicatedSpace(ctx, "solo", directory.Machine{ID: "ded-2", App: "app"}); !errors.Is(err, directory.ErrSpaceExists) {
		t.Fatalf("second create of solo: %v, want ErrSpaceExists", err)
	}
	// The machine registering itself afterwards keeps it dedicated.
	if err := d.RegisterMachine(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got := create(t, d, "s2"); got.Machine != "shared-1" {
		t.Fatalf("shared placement chose %s, want shared-1 (ded-1 is dedicated)", got.Machine)
	}
	ms := machines(t, d)
	if !ms["ded-1"].Dedicated || ms["ded-1"].Spaces != 1 || !ms["ded-1"].Live || ms["shared-1"].Dedicated {
		t.Fatalf("machines: %+v", ms)
	}

	// Deleting: the machine row cannot go while it owns the space.
	if err := d.DeleteMachine(ctx, "ded-1"); !errors.Is(err, directory.ErrMachineInUse) {
		t.Fatalf("DeleteMachine of a machine with a space: %v, want ErrMachineInUse", err)
	}
	if got, err := d.DeleteSpace(ctx, "solo"); err != nil || got.Machine != "ded-1" {
		t.Fatalf("DeleteSpace = %+v, %v", got, err)
	}
	if _, err := d.Lookup(ctx, "solo"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("Lookup after delete: %v", err)
	}
	if _, err := d.DeleteSpace(ctx, "solo"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("second DeleteSpace: %v", err)
	}
	if err := d.DeleteMachine(ctx, "ded-1"); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteMachine(ctx, "ded-1"); !errors.Is(err, directory.ErrMachineNotFound) {
		t.Fatalf("second DeleteMachine: %v", err)
	}
}

// One process at a time holds an app's reconcile lock; another one is told
// at once, without waiting, and gets it once the first lets go.
func TestLockReconcile(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	a, _ := openDirectory(t, url, directory.Config{})
	b, _ := openDirectory(t, url, directory.Config{})

	unlock, err := a.LockReconcile(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.LockReconcile(ctx, app); !errors.Is(err, directory.ErrLockHeld) {
		t.Fatalf("second process: %v, want ErrLockHeld", err)
	}
	other, err := b.LockReconcile(ctx, "another-app")
	if err != nil {
		t.Fatalf("another app's lock: %v", err)
	}
	other()
	unlock()
	unlockB, err := b.LockReconcile(ctx, app)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlockB()
}

// A space is given a new dedicated machine only from the machine it was
// found on: a second repair of the same space changes nothing.
func TestMoveSpaceToDedicated_OnlyFromTheMachineItWasFoundOn(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	if _, err := d.CreateDedicatedSpace(ctx, "solo", directory.Machine{ID: "ded-1", App: app}); err != nil {
		t.Fatal(err)
	}
	sp, err := d.MoveSpaceToDedicated(ctx, "solo", "ded-1", directory.Machine{ID: "ded-2", App: app})
	if err != nil || sp.Machine != "ded-2" {
		t.Fatalf("first repair: %+v, %v", sp, err)
	}
	// A second repair that also found solo on ded-1.
	_, err = d.MoveSpaceToDedicated(ctx, "solo", "ded-1", directory.Machine{ID: "ded-3", App: app})
	if !errors.Is(err, directory.ErrPlacementChanged) {
		t.Fatalf("second repair: %v, want ErrPlacementChanged", err)
	}
	if got, err := d.Lookup(ctx, "solo"); err != nil || got.Machine != "ded-2" {
		t.Fatalf("solo after the second repair: %+v, %v; want it on ded-2", got, err)
	}
	if _, ok := machines(t, d)["ded-3"]; ok {
		t.Fatal("the refused repair recorded its machine")
	}
	if _, err := d.MoveSpaceToDedicated(ctx, "gone", "ded-1", directory.Machine{ID: "ded-4", App: app}); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("repair of a missing space: %v, want ErrSpaceNotFound", err)
	}
}
