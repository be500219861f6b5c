"""Ray plumbing: the session (local or a cluster address), the one way to build an actor pool, and
whether a pool fits what the cluster has free."""
