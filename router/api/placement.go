package api

import (
	"context"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/router/dedicated"
)

// Placement is the policy that decides where a new space lives and what
// deleting one retires: shared (the default, sharedPlacement) or dedicated
// (*dedicated.Placer, a machine per space).
type Placement interface {
	// App is the backend app the policy places spaces in.
	App() string
	// CreateSpace creates space id (a new random ID if empty) and places it.
	CreateSpace(ctx context.Context, id string) (directory.Space, error)
	// DeleteSpace removes space id from the directory and retires what
	// served only it.
	DeleteSpace(ctx context.Context, id string) (dedicated.DeleteResult, error)
}

// sharedPlacement puts a new space on the live machine of app with the
// fewest spaces; deleting a space retires nothing.
type sharedPlacement struct {
	dir *directory.Directory
	app string
}

func (p sharedPlacement) App() string { return p.app }

func (p sharedPlacement) CreateSpace(ctx context.Context, id string) (directory.Space, error) {
	return p.dir.CreateSpace(ctx, id, p.app)
}

func (p sharedPlacement) DeleteSpace(ctx context.Context, id string) (dedicated.DeleteResult, error) {
	sp, err := p.dir.DeleteSpace(ctx, id)
	return dedicated.DeleteResult{Space: sp}, err
}
