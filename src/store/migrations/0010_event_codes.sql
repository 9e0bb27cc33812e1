-- Events carry a stable code (src/lib/event-codes.ts) beside the human reason, so programs decide
-- by the code and the wording can change. Null for a plain move whose labels say it all, and for
-- events recorded before codes existed.

alter table events add column code text;
