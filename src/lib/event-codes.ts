/**
 * What an event says happened, stable for programs to decide by (the CLI's --wait, tests, a
 * console); the event's reason is the sentence for people and may change wording at any time.
 * A code is never renamed once released: add one instead.
 */
export const eventCodes = {
  // The engine, for any kind.
  gave_up: 'a step kept failing and the machine gave up after its bounded attempts',
  failed_permanently: 'a step failed in a way retrying cannot help: the machine failed at once with the reason',
  bug: 'a step broke an invariant of Cellar (a bug): the machine failed at once',
  resumed_by_signal: 'a finished machine acted on a request (a delete of a failed machine, a new verification)',

  // Clusters: creation, watching, deletion.
  create_waiting_admission: 'the new cluster waits to start provisioning: more creates than the provisioning.creates-per-tick rod admits arrived this tick',
  instances_requested: 'the cluster asked for its primary and replicas',
  instance_failed: 'an instance failed while the cluster was being created',
  cluster_running: 'every instance of a new cluster serves',
  replica_replaced: 'a failed replica is being replaced with a fresh one',
  replica_replaced_wal_lost: "a replica fell past max_slot_wal_keep_size (its slot on the primary is lost): it is replaced with a fresh one",
  archive_failing: 'the primary has failed to archive WAL for longer than the bound (CELLAR_ARCHIVE_FAILING_MS); the WAL it holds grows',
  storage_warning: 'the cluster\'s storage passed the warning threshold (CELLAR_STORAGE_WARN_PERCENT of its allocation)',
  storage_read_only: 'the cluster\'s storage passed CELLAR_STORAGE_READ_ONLY_PERCENT: its primary makes new transactions read-only',
  storage_writable: 'the cluster\'s storage fell below the read-only threshold (a resize, deleted data): its primary takes writes again',
  flag_changed: 'an admin set or removed a flag rule (who, old, new and why are in control_changes)',
  cohort_changed: 'an admin created, deleted or changed the members of a cohort',
  storage_locked: 'a full cluster went on growing past its whole allocation (read-only turned off in a session): the proxy refuses its connections until it is resized',
  storage_autogrown: 'autogrow proposed a larger allocation (a storage revision by `cellar`)',
  storage_autogrow_held: 'autogrow could not grow the storage: at its ceiling, in the resize cooldown, or a host without room',
  archive_recovered: 'the primary archives WAL again after archive_failing',
  replicas_added: 'the cluster has fewer replicas than it should (scaled up): new ones were created; each is routed once it streams',
  replicas_removed: 'the cluster has more replicas than it should (scaled down): the surplus left the routes and the synchronous standbys and was asked to delete itself',
  replicas_removal_waiting: 'replicas to remove wait for the primary to run: its synchronous standbys are written before one goes',
  commits_wait_for_replica: 'the primary now waits for a replica at commit (sync or sync-strict)',
  commits_async: 'the primary does not wait for a replica at commit (durability async)',
  sync_dropped_to_async: 'no replica streams: sync commits stopped waiting until one does',
  deleting_instances: 'the cluster asked each of its instances to delete itself',
  deleted_during_failover: 'the cluster was deleted while waiting for a replica to promote',
  cluster_deleted: 'every instance is deleted; the cluster is gone',

  // Failover and switchover.
  failover_started: 'a failover began (asked for, or the primary was lost)',
  failover_refused_no_replica: 'no replica serves: failover waits (or a human forces it)',
  failover_refused_lag: 'every serving replica lags past the limit: failover waits (or a human forces it)',
  circuit_breaker_open: 'too many failovers in the cell recently: automatic failover is off until a human acts',
  primary_restarting_in_place: 'the primary is down and there is no replica: it is restarted where it is',
  primary_fenced: 'the old primary is out of the routes and stopped',
  waiting_for_host_lease: 'the old primary\'s host is unreachable: the failover waits until its lease has certainly expired',
  primary_fenced_by_lease: 'the old primary\'s host is unreachable and its lease has certainly expired: its agent has stopped it from accepting writes',
  candidate_picked: 'the replica to promote was chosen',
  switchover_started: 'a switchover began',
  switchover_refused: 'a switchover was asked for and could not begin',
  switchover_called_off: 'the switchover target did not catch up in time: the route resumed on the old primary',
  route_paused: 'new connections wait while the primary role moves',
  target_caught_up: 'the switchover target is close enough: the old primary is stopped',
  old_primary_stopped: 'the old primary stopped cleanly',
  promoted: 'the new primary accepts writes',
  replicas_repointed: 'the other replicas follow the new primary',
  routed_to_new_primary: 'the proxy sends writes to the new primary',
  old_primary_rejoined: 'the old primary is back as a streaming replica',
  old_primary_deleted: 'the old primary was deleted before it rejoined',
  old_primary_rejoin_failed: 'the old primary could not rejoin; it will be replaced',
  new_primary_lost: 'the new primary was lost while the old one rejoined',
  rejoin_wait_exceeded: 'the old primary is still rejoining after the bound; the cluster carries on',
  old_primary_host_leaving: "the old primary's host is draining or lost: the cluster does not wait for it to rejoin; it is replaced",

  // Instances moving off a draining or lost host (docs/HOSTS.md, "Hosts as machines").
  replacements_requested: 'new replicas were created on other hosts for instances on a draining or lost host',
  waiting_for_replacements: 'the instances on a draining or lost host wait until their replacements stream',
  drain_switchover_started: 'a switchover began to move the primary off a draining host',
  moved_instances_deleted: 'instances on a draining or lost host were asked to delete themselves: their replacements serve',

  // Instances.
  port_allocated: 'the instance has its port',
  data_directory_created: 'a fresh data directory was made',
  restored_from_backup: 'the data directory was restored from a backup; recovery runs at start',
  cloned_from_primary: 'the replica was cloned from the primary',
  server_started: 'the server process started',
  instance_ready: 'the instance serves (a primary accepts writes, a replica streams)',
  not_ready_in_time: 'the server did not become ready within its bound',
  exited_before_ready: 'the server exited before it was ready; it is started again',
  fenced_not_started: 'a fenced old primary is never started as a primary',
  instance_placed: 'the instance was put on a host (which, its zone, and why that one)',
  instance_lost: 'the server is gone or cannot be queried',
  host_unreachable: 'the instance\'s host sent no heartbeat for longer than its lease',
  waiting_for_host: 'the instance\'s host is unreachable: it waits (bounded) for the host to come back',
  usage_unmeasured: 'the instance\'s use on disk could not be measured: the last figure is kept and it is measured again at the next interval',
  not_serving: 'the instance has not served for too long; its cluster replaces it',
  restore_failed: 'the restored server stopped during recovery too many times',
  rejoin_requested: 'the old primary rejoins as a replica of the new primary',
  restart_requested: 'the cluster restarts the instance in place',
  rewound: "the old primary was rewound onto the new primary's timeline",
  cloned_afresh: 'the old primary could not be rewound and was cloned afresh',
  instance_deleted: 'the server is stopped and its data and port released',
  instance_deleted_on_lost_host: 'the instance is deleted from the cell; its host is lost, so its data stays on that host',

  // Backups.
  backup_source_chosen: 'the instance to back up from was chosen',
  backup_source_gone: 'the chosen source stopped running; choosing again',
  no_backup_source: 'no instance ran to back up from within the bound',
  backup_taken: 'the base backup is in the backup store',
  backup_verified: 'the backup was restored on a scratch server and checked',
  backup_verification_failed: 'the backup did not restore or did not check',
  backup_schedule_ran: 'the schedule started backups, deleted expired ones or purged deleted clusters',

  // Hosts (docs/HOSTS.md).
  host_joined: "the host's agent joined with its token and received its certificate",
  host_removed: "the host was removed: its certificates are revoked and its name and address are free",
  host_draining: 'the host is draining: its instances move to other hosts and it takes no new ones',
  host_drained: 'no instance is left on the draining host: it can be patched or removed',
  host_undrained: 'the host takes instances again (a drain called off, or back from maintenance)',
  host_lost: "the host's lease expired longer ago than CELLAR_HOST_LOST_MS: its instances are replaced on other hosts",
  host_back: 'a lost host renewed its lease: it takes instances again',

  // Fleet rollouts (docs/CONFIG.md, "Fleet defaults and rollouts").
  rollout_cluster_started: 'a rollout gave a cluster a revision with the new fleet defaults and waits for it',
  rollout_cluster_retried: 'a resumed rollout waits again for the cluster it halted at (its defaults were already moved)',
  rollout_cluster_done: "the cluster's change finished and it is healthy: the rollout goes on",
  rollout_clusters_skipped: 'clusters that already run the new defaults (or were deleted) were passed over',
  rollout_waiting_for_change: 'another change of the cluster is under way: the rollout waits (bounded) before proposing',
  rollout_halted: 'the rollout stopped by itself at a cluster (its change failed or was refused, or it was not healthy in time)',
  rollout_paused: 'the rollout was paused between clusters',
  rollout_resumed: 'the rollout goes on after a pause',
  rollout_aborted: 'the rollout was aborted: clusters not reached keep the defaults they run with',
  rollout_completed: 'every live cluster runs the new fleet defaults',

  // The warm pool.
  adopted_from_warm_pool: 'a create was answered with a ready warm cluster',

  // Configuration changes (docs/CONFIG.md): the change machine, instances restarting for it, drift.
  config_reloaded: 'a revision\'s configuration was written to every instance and reloaded',
  replicas_ready: 'the cluster has the replicas the revision asks for, all streaming',
  replica_restarting: 'a replica left the routes and restarts to take restart parameters',
  replica_restarted: 'a restarted replica streams with the new settings and is back in the routes',
  primary_restarting: 'the primary restarts in place (route paused: new connections wait)',
  primary_restarted: 'the primary restarted in place accepts writes; the route resumed',
  change_switchover_requested: 'a change asked its cluster to switch over, so the old primary restarts as a replica',
  change_switchover_done: 'the switchover of a change finished and the old primary streams with the new settings',
  config_not_confirmed: 'an instance does not report the revision yet: written, reloaded or restarted again',
  config_applied: 'every instance reports the revision\'s settings with nothing waiting for a restart',
  change_failed: 'a configuration change could not finish; the reason names the instance and the step',
  change_rolled_back: 'a configuration change could not be applied (an instance does not start with it): the revision before it is applied again, as a new revision',
  restart_requested_for_change: 'the instance restarts (asked by a configuration change or a drift repair)',
  catalogue_read: 'the parameter catalogue of a Postgres version was read from a running instance',
  settings_check_failed: 'the cluster could not read or repair its instances\' settings this time (it tries again at the next check); the cluster is not affected',
  settings_drift_repaired: 'a drifted instance\'s configuration was put back',

  // The freeze (docs/CONTROLS.md "Freeze").
  cell_frozen: 'an operator froze the cell: non-emergency change waits until the thaw (who and why in the reason)',
  cell_thawed: 'an operator thawed the cell: what waited for the freeze goes on',
  held_by_freeze: 'the cell is frozen: this machine waits (a new cluster\'s instances, a configuration change, a rollout\'s next cluster, scheduled backups) and goes on by itself after the thaw',

  // Control rods (docs/CONTROLS.md "Rods").
  rod_changed: 'an operator set a control rod (old and new value in the labels; who and why in the reason)',
} as const;

export type EventCode = keyof typeof eventCodes;

export function isEventCode(value: string): value is EventCode {
  return Object.hasOwn(eventCodes, value);
}
