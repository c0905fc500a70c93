-- stream-stats keeps its own database: a consumer never shares the producer's tables.

-- What has been applied, keyed like the events' per-stream order. Inserted in
-- the same transaction as the update it guards, so a redelivered or replayed
-- event is recognised and skipped.
create table inbox (
    aggregate_id      uuid not null,
    aggregate_version bigint not null,
    event_id          uuid not null,
    applied_at        timestamptz not null default now(),
    primary key (aggregate_id, aggregate_version)
);

create table streams (
    stream_id        uuid primary key,
    creator_id       uuid not null,
    category         text not null,
    status           text not null check (status in ('live', 'ended')),
    started_at       timestamptz not null,
    ended_at         timestamptz,
    duration_seconds double precision
);

create table category_stats (
    category        text primary key,
    live            bigint not null default 0,
    started_total   bigint not null default 0,
    ended_total     bigint not null default 0,
    total_seconds   double precision not null default 0
);
