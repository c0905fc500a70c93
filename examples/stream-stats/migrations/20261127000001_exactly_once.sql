-- For `--delivery exactly-once` (docs/events.md, "Exactly once"): no inbox,
-- so what has been applied lives in the state itself.

-- The stream version this row, and its share of category_stats, reflects: an
-- event is applied only if it is newer, so a replayed one changes nothing.
-- 0 in at-least-once mode, where the inbox does that job.
alter table streams add column version bigint not null default 0;

-- The next offset to read per partition, written in the same transaction as
-- the state change of the record before it: the consumer resumes here, not at
-- the group's committed offsets in Kafka (it commits none in this mode).
create table consumer_offsets (
    topic        text not null,
    partition_id integer not null,
    next_offset  bigint not null,
    primary key (topic, partition_id)
);
