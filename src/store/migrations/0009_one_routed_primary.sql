-- Invariant 1, held by the store itself: a cluster has at most one instance the proxy routes
-- writes to (a live, unfenced primary). A bug that would route two is refused with SQLSTATE 23505
-- instead of splitting the cluster's writes. A role swap demotes the old primary before it
-- promotes the new one, so the index holds at every statement of that transaction.
-- A store that already breaks the invariant stops here: the migration fails, and a human decides.

create unique index instances_one_routed_primary on instances (cluster_id)
  where role = 'primary' and not fenced and deleted_at is null;
