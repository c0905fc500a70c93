-- Users and live streams: the service's current state.

create table users (
    id         uuid primary key,
    username   text not null unique check (username ~ '^[A-Za-z0-9_.-]{1,64}$'),
    avatar_url text check (avatar_url is null or (char_length(avatar_url) <= 2048 and avatar_url ~* '^https?://')),
    created_at timestamptz not null default now()
);

create table live_streams (
    id            uuid primary key,                     -- UUIDv7
    creator_id    uuid not null references users (id),
    title         text not null check (char_length(btrim(title)) between 1 and 200),
    category      text not null check (category in ('gaming', 'music', 'talk', 'sports', 'creative', 'other')),
    thumbnail_url text check (thumbnail_url is null or (char_length(thumbnail_url) <= 2048 and thumbnail_url ~* '^https?://')),
    status        text not null check (status in ('live', 'ended')),
    started_at    timestamptz not null,
    ended_at      timestamptz,
    version       bigint not null check (version >= 1),
    check ((status = 'ended') = (ended_at is not null))
);

-- At most one live stream per creator. The service maps a violation of this
-- index (by name) to 409; it never checks first and inserts after.
create unique index live_streams_one_live_per_creator on live_streams (creator_id) where status = 'live';

-- The list query: live streams newest first, optionally by category.
create index live_streams_live_newest on live_streams (started_at desc, id desc) where status = 'live';
create index live_streams_live_category_newest on live_streams (category, started_at desc, id desc) where status = 'live';
create index live_streams_creator on live_streams (creator_id);
