-- A wake that lands while the machine's step runs (another machine's outcome, a nudge, a thaw) set
-- next_tick_at to now(), and the step's own outcome then wrote its nap over it: the wake was lost,
-- and the machine slept its whole nap (a cluster missed that its primary's storage crossed the
-- read-only threshold). A wake now also sets `woken`; a claim clears it (the step reads the world
-- after the claim), and an outcome committed while it is set is due at once, not after its nap.
alter table machines add column woken boolean not null default false;
