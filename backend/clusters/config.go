package clusters

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
)

// EnvVar is the environment variable that names the data clusters besides
// the directory's own database, on backends, routers and spacectl alike.
const EnvVar = "DATA_CLUSTERS"

// Cluster is a data cluster other than directory.DefaultCluster.
type Cluster struct {
	// Name is how the directory refers to it (directory.ValidClusterName).
	Name string
	// URL is its Postgres connection URL (postgres://...).
	URL string
}

// Parse reads DATA_CLUSTERS: name=URL pairs separated by commas, such as
// "eu2=postgres://u:p@db2:5432/spaceport,eu3=postgres://u:p@db3/spaceport".
// A comma that is not followed by name= stays in the URL before it, so
// multi-host URLs (postgres://h1,h2/db) work; a comma inside a URL's query
// must be percent-encoded (%2C). Empty means no other cluster. Errors name
// the offending entry but never print a URL, which may hold a password.
func Parse(v string) ([]Cluster, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	var out []Cluster
	for piece := range strings.SplitSeq(v, ",") {
		name, url, ok := strings.Cut(strings.TrimSpace(piece), "=")
		// What comes before the first "=" of an entry is a name; a URL's
		// continuation has ":", "/", "@" or "?" there, or no "=" at all.
		if !ok || strings.ContainsAny(name, ":/@?") {
			if len(out) == 0 {
				return nil, fmt.Errorf("%s: want name=postgres://... pairs separated by commas", EnvVar)
			}
			out[len(out)-1].URL += "," + piece
			continue
		}
		out = append(out, Cluster{Name: name, URL: strings.TrimSpace(url)})
	}
	if err := checkClusters(out); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvVar, err)
	}
	for _, c := range out {
		if _, err := poolConfig(c, ""); err != nil {
			return nil, fmt.Errorf("%s: %w", EnvVar, err)
		}
	}
	return out, nil
}

// PlacementEnvVar is the router's (and spacectl's) environment variable
// that limits which clusters receive new spaces.
const PlacementEnvVar = "NEW_SPACE_CLUSTERS"

// Placement reads NEW_SPACE_CLUSTERS: comma-separated names, each one of
// known (Names of DATA_CLUSTERS), of the clusters new spaces are placed on
// (the one with the fewest spaces first). Empty means every known cluster.
// A cluster left out keeps serving its spaces; it just receives no new ones
// (one that is full, or about to be retired).
func Placement(v string, known []string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return known, nil
	}
	var out []string
	for name := range strings.SplitSeq(v, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(known, name) {
			return nil, fmt.Errorf("%s: %.40q is not a known cluster (%s and those of %s)", PlacementEnvVar, name,
				directory.DefaultCluster, EnvVar)
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// Names returns directory.DefaultCluster followed by the names of cs: every
// cluster a process configured with cs knows.
func Names(cs []Cluster) []string {
	out := []string{directory.DefaultCluster}
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// checkClusters checks names: valid, not the main cluster's, each once.
func checkClusters(cs []Cluster) error {
	seen := map[string]bool{}
	for _, c := range cs {
		switch {
		case !directory.ValidClusterName(c.Name):
			return fmt.Errorf("cluster %.40q: %w", c.Name, directory.ErrInvalidCluster)
		case c.Name == directory.DefaultCluster:
			return fmt.Errorf("cluster %s is the directory's own database (DATABASE_URL); give the others other names", c.Name)
		case seen[c.Name]:
			return fmt.Errorf("cluster %s is named twice", c.Name)
		}
		seen[c.Name] = true
	}
	return nil
}

// poolConfig parses c's URL into a pool configuration, with application
// name app unless the URL sets one.
func poolConfig(c Cluster, app string) (*pgxpool.Config, error) {
	if !strings.HasPrefix(c.URL, "postgres://") && !strings.HasPrefix(c.URL, "postgresql://") {
		return nil, fmt.Errorf("cluster %s: want a postgres:// URL", c.Name)
	}
	pc, err := pgxpool.ParseConfig(c.URL)
	if err != nil {
		// pgx's message may quote the URL, password included: say less.
		return nil, fmt.Errorf("cluster %s: %w", c.Name, errInvalidURL)
	}
	if _, ok := pc.ConnConfig.RuntimeParams["application_name"]; !ok && app != "" {
		pc.ConnConfig.RuntimeParams["application_name"] = app
	}
	return pc, nil
}

var errInvalidURL = errors.New("not a valid Postgres connection URL")
