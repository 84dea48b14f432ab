-- The example table the SQL connector indexes (docker-compose.yml's `postgres` service runs
-- this once, on an empty data volume). `updated_at` is the connector's cursor: the trigger
-- moves it on every insert and update, so every change is seen; `deleted` is a soft delete.
CREATE TABLE IF NOT EXISTS articles (
    id         bigserial PRIMARY KEY,
    title      text NOT NULL,
    body       text NOT NULL,
    author     text,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted    boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS articles_updated_at ON articles (updated_at, id);

CREATE OR REPLACE FUNCTION articles_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS articles_touch ON articles;
CREATE TRIGGER articles_touch BEFORE INSERT OR UPDATE ON articles
    FOR EACH ROW EXECUTE FUNCTION articles_touch();

-- Debezium (the commented example in docker-compose.yml) reads whole rows on delete with:
ALTER TABLE articles REPLICA IDENTITY FULL;

INSERT INTO articles (title, body, author) VALUES
    ('Pairing the hub', 'Hold the pairing button for five seconds until the light blinks blue.', 'ann'),
    ('Battery life', 'Door sensors last about two years; cold garages shorten that.', 'bob');
