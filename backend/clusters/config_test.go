package clusters_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/clusters"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []clusters.Cluster
	}{
		{"", nil},
		{"  ", nil},
		{"b=postgres://u:p@db2:5432/spaceport", []clusters.Cluster{{"b", "postgres://u:p@db2:5432/spaceport"}}},
		{"eu2=postgres://u@h/db?sslmode=require, eu3=postgresql://h3/db", []clusters.Cluster{
			{"eu2", "postgres://u@h/db?sslmode=require"}, {"eu3", "postgresql://h3/db"}}},
		// A multi-host URL keeps its commas.
		{"b=postgres://u:p@h1:5432,h2:5432/db?target_session_attrs=read-write,c=postgres://h/db", []clusters.Cluster{
			{"b", "postgres://u:p@h1:5432,h2:5432/db?target_session_attrs=read-write"}, {"c", "postgres://h/db"}}},
	} {
		got, err := clusters.Parse(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Parse(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParse_BadInput(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://h/db", "want name=postgres://"},
		{"b", "want name=postgres://"},
		{"B=postgres://h/db", "invalid cluster name"},
		{"main=postgres://h/db", "the directory's own database"},
		{"b=postgres://h/db,b=postgres://h2/db", "named twice"},
		{"b=mysql://secret@h/db", "cluster b: want a postgres:// URL"},
		{"b=postgres://u:secret@h:notaport/db", "cluster b: not a valid Postgres connection URL"},
		{"b=postgres://h/db,x=y", "cluster x: want a postgres:// URL"},
	} {
		_, err := clusters.Parse(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "DATA_CLUSTERS: ") {
			t.Errorf("Parse(%q) = %v; want an error about %q", tc.in, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Parse(%q) printed the password: %v", tc.in, err)
		}
	}
}

func TestNames(t *testing.T) {
	cs, err := clusters.Parse("b=postgres://h/db,c=postgres://h/db2")
	if err != nil {
		t.Fatal(err)
	}
	if got := clusters.Names(cs); !slices.Equal(got, []string{"main", "b", "c"}) {
		t.Fatalf("Names = %v", got)
	}
}

func TestPlacement(t *testing.T) {
	known := []string{"main", "b", "c"}
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", known},
		{"b", []string{"b"}},
		{" c , main,c", []string{"c", "main"}},
	} {
		got, err := clusters.Placement(tc.in, known)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Placement(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"d", "b,", "main,Main"} {
		if _, err := clusters.Placement(in, known); err == nil || !strings.Contains(err.Error(), "NEW_SPACE_CLUSTERS") {
			t.Errorf("Placement(%q) = %v; want an error", in, err)
		}
	}
}
