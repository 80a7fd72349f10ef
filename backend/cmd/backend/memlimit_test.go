package main

import "testing"

func TestMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		env     map[string]string
		limit   int64
		ok, bad bool
	}{
		{env: map[string]string{}},
		{env: map[string]string{"FLY_VM_MEMORY_MB": "512"}, limit: 512 << 20 * 85 / 100, ok: true},
		{env: map[string]string{"FLY_VM_MEMORY_MB": "512", "GOMEMLIMIT": "300MiB"}},
		{env: map[string]string{"FLY_VM_MEMORY_MB": "lots"}, bad: true},
		{env: map[string]string{"FLY_VM_MEMORY_MB": "0"}, bad: true},
	} {
		limit, ok, err := memoryLimit(func(k string) string { return tc.env[k] })
		if (err != nil) != tc.bad || ok != tc.ok || limit != tc.limit {
			t.Errorf("%v: %d, %v, %v; want %d, %v, error %v", tc.env, limit, ok, err, tc.limit, tc.ok, tc.bad)
		}
	}
}
