package directory

import "github.com/spaceport-sync/spaceport/backend/migrate"

// migrations is the directory's schema history. Append only; never edit a
// released step.
//
// Design notes for step 1:
//
//   - machines.space_count is kept by a trigger on spaces, so placement reads
//     one row per machine instead of counting every space (O(machines), not
//     O(spaces)), and the count stays right whoever writes spaces, including
//     an operator with psql.
//   - machines_placement indexes exactly the placement query: started
//     machines of an app by fewest spaces. last_heartbeat is deliberately not
//     indexed: heartbeats then stay HOT updates (no index churn every few
//     seconds per machine); liveness is a filter over an app's few machines.
//   - spaces_machine serves listing a machine's spaces and the foreign key
//     check when a machine row is deleted.
//   - The same trigger announces every placement change with pg_notify on
//     NotifyChannel, inside the writing transaction: listeners hear of it only
//     if and when it commits, and never miss a change made outside this
//     package.
var migrations = []migrate.Migration{
	{Version: 1, Name: "machines and spaces", SQL: `
CREATE SCHEMA IF NOT EXISTS directory;

CREATE TABLE directory.machines (
	id             text        PRIMARY KEY,
	app            text        NOT NULL,
	region         text        NOT NULL DEFAULT '',
	state          text        NOT NULL,
	last_heartbeat timestamptz NOT NULL DEFAULT now(),
	created_at     timestamptz NOT NULL DEFAULT now(),
	space_count    integer     NOT NULL DEFAULT 0
);

CREATE INDEX machines_placement ON directory.machines (app, space_count, id) WHERE state = 'started';

CREATE TABLE directory.spaces (
	id         text        PRIMARY KEY,
	app        text        NOT NULL,
	machine    text        NOT NULL REFERENCES directory.machines (id),
	created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX spaces_machine ON directory.spaces (machine);

CREATE FUNCTION directory.spaces_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP = 'UPDATE' AND OLD.machine = NEW.machine AND OLD.app = NEW.app THEN
		RETURN NULL;
	END IF;
	IF TG_OP IN ('UPDATE', 'DELETE') THEN
		UPDATE directory.machines SET space_count = space_count - 1 WHERE id = OLD.machine;
	END IF;
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
		UPDATE directory.machines SET space_count = space_count + 1 WHERE id = NEW.machine;
		PERFORM pg_notify('` + NotifyChannel + `', NEW.id);
	ELSE
		PERFORM pg_notify('` + NotifyChannel + `', OLD.id);
	END IF;
	RETURN NULL;
END
$$;

CREATE TRIGGER spaces_changed AFTER INSERT OR DELETE OR UPDATE OF machine, app ON directory.spaces
	FOR EACH ROW EXECUTE FUNCTION directory.spaces_changed();
`},
	// Step 2: machines that belong to one space (PLACEMENT=dedicated). The
	// router records them when it creates them; shared placement skips them,
	// so a space never lands on another space's machine.
	{Version: 2, Name: "dedicated machines", SQL: `
ALTER TABLE directory.machines ADD COLUMN dedicated boolean NOT NULL DEFAULT false;
DROP INDEX directory.machines_placement;
CREATE INDEX machines_placement ON directory.machines (app, space_count, id) WHERE state = 'started' AND NOT dedicated;
`},
	// Step 3: spaces spread over several Postgres clusters (clusters.go).
	// Self-contained: its columns, table, index and trigger are its own, so
	// renumbering it against another branch's step 3 touches only Version.
	//
	//   - spaces.cluster names the cluster that holds the space's data; the
	//     default, DefaultCluster, is the directory's own database, so every
	//     space that existed before this step stays where it was.
	//   - spaces.moving_to is set while spacectl copies the space to another
	//     cluster: no backend serves the space meanwhile. The partial index
	//     lists moves in progress (a stuck one is found at once).
	//   - clusters.space_count is kept by a trigger, like machines'
	//     space_count, so placement reads one row per cluster. Rows appear
	//     with the first space a cluster receives.
	//   - The trigger also NOTIFYs every change of cluster or moving_to, so
	//     backends let go of a space marked moving at once and routers drop
	//     its cached placement. (Inserts and deletes are already announced.)
	{Version: 3, Name: "data clusters", SQL: `
ALTER TABLE directory.spaces
	ADD COLUMN cluster text NOT NULL DEFAULT '` + DefaultCluster + `',
	ADD COLUMN moving_to text,
	ADD COLUMN moving_since timestamptz;

CREATE INDEX spaces_moving ON directory.spaces (id) WHERE moving_to IS NOT NULL;

CREATE TABLE directory.clusters (
	name        text   PRIMARY KEY,
	space_count bigint NOT NULL DEFAULT 0
);
INSERT INTO directory.clusters (name, space_count) SELECT '` + DefaultCluster + `', count(*) FROM directory.spaces;

CREATE FUNCTION directory.spaces_cluster_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.cluster IS DISTINCT FROM NEW.cluster) THEN
		UPDATE directory.clusters SET space_count = space_count - 1 WHERE name = OLD.cluster;
	END IF;
	IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND OLD.cluster IS DISTINCT FROM NEW.cluster) THEN
		INSERT INTO directory.clusters (name, space_count) VALUES (NEW.cluster, 1)
		ON CONFLICT (name) DO UPDATE SET space_count = directory.clusters.space_count + 1;
	END IF;
	IF TG_OP = 'UPDATE' AND (OLD.cluster IS DISTINCT FROM NEW.cluster OR OLD.moving_to IS DISTINCT FROM NEW.moving_to) THEN
		PERFORM pg_notify('` + NotifyChannel + `', NEW.id);
	END IF;
	RETURN NULL;
END
$$;

CREATE TRIGGER spaces_cluster_changed AFTER INSERT OR DELETE OR UPDATE OF cluster, moving_to ON directory.spaces
	FOR EACH ROW EXECUTE FUNCTION directory.spaces_cluster_changed();
`},
}
