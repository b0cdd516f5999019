"""Storage behind narrow interfaces: in-memory, Redis and SQL implementations. Tenants and keys live in
`sql` (schema changes in `migrations/`, applied by `migrate`); key changes travel between replicas
through `revocations`."""
