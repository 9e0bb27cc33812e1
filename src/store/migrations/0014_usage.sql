-- Measured use (docs/STORAGE.md, "Measured use"): what each instance takes on disk, data and WAL
-- apart, and the free space of each filesystem a host writes to; refreshed on a schedule.

-- {dataBytes, walBytes, filesystem: {path, totalBytes, freeBytes, availableBytes}}; null until first measured.
alter table instances add column usage jsonb, add column usage_measured_at timestamptz;

-- {filesystems: [{path, totalBytes, freeBytes, availableBytes, purposes: [...]}]}; null until first measured.
alter table hosts add column usage jsonb, add column usage_measured_at timestamptz;
